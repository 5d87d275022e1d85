"""A real Dask cluster on this machine, started exactly as the README says to start one on GPU hosts:

    with dask_cluster(workers=2) as cluster:          # `dask scheduler`, `dask worker ... --resources GPU=1`
        DaskJobExecutor(cluster.address)
        cluster.worker_pids("gpu-0")                  # the worker process (under its nanny)
        cluster.kill_worker("gpu-0")                  # SIGKILL it mid-job; the nanny starts a new one

Nothing is faked here: these are the `dask` command-line programs, on 127.0.0.1, with no
preload or plugin. Training on them runs on the CPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.fakes.procs import parents

DASK = str(Path(sys.executable).parent / "dask")


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> the `dask worker` (nanny) process
    root: Path = Path(".")

    def worker_pids(self, name: str) -> list[int]:
        """The worker process the nanny for `name` runs (not its resource tracker)."""
        out = []
        for pid, ppid in parents().items():
            if ppid == self.workers[name].pid:
                try:
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        out.append(pid)
                except OSError:
                    continue
        return out

    def kill_worker(self, name: str) -> int:
        [pid] = self.worker_pids(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_worker(self, name: str, gpus: int = 1) -> None:
        args = [DASK, "worker", "--scheduler-file", str(self.root / "scheduler.json"), "--nworkers", "1",
                "--nthreads", "1", "--name", name, "--no-dashboard", "--host", "127.0.0.1"]
        if gpus:
            args += ["--resources", f"GPU={gpus}"]
        log = open(self.root / f"{name}.log", "w")
        self.workers[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                              start_new_session=True)

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in [*self.workers.values(), self.scheduler]:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextmanager
def dask_cluster(root: Path, workers: int = 1, gpus: int = 1, port: int = 0) -> Iterator[Cluster]:
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "scheduler.log", "w")
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                                  "--scheduler-file", str(root / "scheduler.json")], stdout=log,
                                 stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (root / "scheduler.json").exists():
        if time.monotonic() > deadline or scheduler.poll() is not None:
            scheduler.kill()
            raise RuntimeError("the Dask scheduler did not start: " + (root / "scheduler.log").read_text()[-2000:])
        time.sleep(0.1)
    time.sleep(0.2)
    address = json.loads((root / "scheduler.json").read_text())["address"]
    cluster = Cluster(address, scheduler, root=root)
    try:
        for i in range(workers):
            cluster.start_worker(f"gpu-{i}", gpus)
        if workers:
            cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()
