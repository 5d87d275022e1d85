"""Training through a Dask cluster vs a local worker process: overhead, bytes shipped, recovery from a worker's death.

    .venv/bin/python bench/gpu_cluster.py [--per-label 40] [--size 128] [--epochs 1] [--repeat 2]

A real cluster on this machine, started as the README says (`dask scheduler`, `dask worker
--nworkers 1 --nthreads 1 --resources GPU=1`), training on the CPU. The workshop is 3 labels
x --per-label generated photo-like images stored as ingest stores them (up to 512 px JPEGs).

  baseline (local): `runs.train_workshop` with a `ProcessJobExecutor` that keeps a warm
      spare process, as the bot does with EXECUTOR=process;
  dask: the same spec through `DaskJobExecutor` (the job packs its images, the worker trains
      in its warm child process and sends the model and plots back). One untimed job goes
      first, so the worker has its warm child, as one that has been up a while has.

Prints the wall time of each (median of --repeat, sides alternating) and their ratio; the bytes
the job ships each way (the pickled job and the pickled reply); and, with a longer job, how long
after a worker is killed mid-job the job is running again on a worker.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcls.collect import add_files, folder_files  # noqa: E402
from imgcls.dask_jobs import DaskJobExecutor  # noqa: E402
from imgcls.jobs import ProcessJobExecutor  # noqa: E402
from imgcls.remote import pack  # noqa: E402
from imgcls.runs import RunParams, prepare_run, train_workshop  # noqa: E402
from imgcls.store import Store  # noqa: E402
from imgcls.train import train, warm_up  # noqa: E402
from tests.conftest import write_image_folders  # noqa: E402
from tests.fakes.dask_cluster import dask_cluster  # noqa: E402

LABELS = ["circles", "squares", "triangles"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-label", type=int, default=40)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imgcls-bench-dask-"))
    print(f"settings: 3 x {args.per_label} images, lite0, {args.size} px, 1 frozen + {args.epochs} epochs, "
          f"repeat {args.repeat}; workdir {work}", flush=True)
    photos = write_image_folders(work / "photos", per_label=args.per_label, size=384)
    store = Store(work / "data")
    wid = store.create_workshop("bench", LABELS)["id"]
    add_files(store, wid, folder_files(photos, LABELS))
    params = RunParams(arch="lite0", epochs=args.epochs, size=args.size, bs=16, suspects="none")

    local = ProcessJobExecutor(1, warm=warm_up)
    time.sleep(8)  # the spare has imported fastai, as in a bot that has been up a while
    with dask_cluster(work / "cluster", workers=1) as cluster:
        remote = DaskJobExecutor(cluster.address)
        # one untimed job first: the worker keeps a warm child for the next job, as a worker that has been up a
        # while does (the local executor's spare is already warm)
        assert train_workshop(store, wid, params, remote, timeout=1800)["status"] == "done"
        time.sleep(8)
        times: dict[str, list[float]] = {"local": [], "dask": []}
        for _ in range(args.repeat):
            for name, executor in (("local", local), ("dask", remote)):
                t0 = time.perf_counter()
                run = train_workshop(store, wid, params, executor, timeout=1800)
                assert run["status"] == "done", run["error"]
                times[name].append(time.perf_counter() - t0)
                time.sleep(8)  # both sides warm their spare again, as between a workshop's runs
        lo, da = statistics.median(times["local"]), statistics.median(times["dask"])
        print(f"baseline (local worker process, warm spare): {lo:.1f} s; dask: {da:.1f} s; ratio: {da / lo:.2f}x "
              f"dask/local (each run: local {times['local']}, dask {times['dask']})", flush=True)

        _, spec = prepare_run(store, wid, params)
        sent = len(pickle.dumps(pack(spec)))
        from imgcls.remote import run_packed  # the reply's size: what the worker sends back
        client = remote.client()
        future = client.submit(run_packed, "imgcls.train:train", pack(spec), "imgcls-bench", "bench", pure=False,
                               resources={"GPU": 1})
        reply = future.result()
        received = len(pickle.dumps(reply))
        print(f"bytes for a 3 x {args.per_label}-image job: sent {sent / 1e6:.2f} MB (the images "
              f"{sum(len(b) for b in pack(spec)['files'].values()) / 1e6:.2f} MB), received {received / 1e6:.2f} MB "
              f"(the model {len(reply['files']['model.pkl']) / 1e6:.2f} MB and the plots)", flush=True)

        # a worker killed mid-job: how long until the job runs again
        cluster.start_worker("gpu-1")
        cluster.wait_for_workers(2)
        long = RunParams(arch="lite0", epochs=6, size=args.size, bs=16, suspects="none")
        _, spec = prepare_run(store, wid, long)
        epoch, starts, who = threading.Event(), [], {}

        def progress(e):
            if e.kind == "stage" and e.message.startswith("running on GPU worker"):
                starts.append(time.monotonic())
                who["name"] = e.message.rsplit(" ", 1)[1]
            if e.kind == "epoch_start":
                epoch.set()
                if len(starts) == 2 and "again" not in who:
                    who["again"] = time.monotonic()
        job = remote.submit(train, spec, progress=progress, timeout=1800)
        epoch.wait(600)
        killed = time.monotonic()
        cluster.kill_worker(who["name"])
        deadline = killed + 600
        while len(starts) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(starts) < 2:
            print("the job did not start again within 600 s of the kill", flush=True)
            return 1
        print(f"worker killed mid-job -> the job running again on a worker: {starts[1] - killed:.1f} s", flush=True)
        job.result(1800)
        print(f"... its first epoch started again {who['again'] - killed:.1f} s after the kill, on worker "
              f"{who['name']}", flush=True)
        print(f"... and finished {time.monotonic() - killed:.1f} s after the kill", flush=True)
        remote.shutdown()
    local.shutdown()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
