"""The GPU-host side of a Dask job: a task that unpacks a job, trains in a child process, sends back bytes.

    # on a worker, run by Dask (see imgcls.dask_jobs, which submits it):
    reply = run_packed(packed, topic="imgcls-job-…", job_id="…")   # {"result": TrainResult, "files": {...}}

    # the child process the task starts (never by hand); it warms up, then reads its job from stdin:
    python -m imgcls.remote --serve imgcls.train:train WORKER_PID

Dask cannot interrupt a running task, and its worker processes are daemonic (they may not
start multiprocessing children), so the task runs the job with `subprocess`: a fresh
interpreter that imports the job function by name. Each worker keeps one such child warm (its
imports done, no CUDA touched) for the next job, as the local executor keeps a spare. The task watches a `distributed.Event`
named after the job and kills the child when it is set, so a cancel or a time limit really
frees the GPU. The child exits if the worker dies. Progress comes back on the child's stdout
(lines starting with PREFIX) and goes out with `Worker.log_event(topic, ...)`, which the bot's
client follows with `Client.subscribe_topic`. Everything the job needs travels with it:
workers need nothing but this package installed.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import JobCancelled, JobTimedOut, TrainingFailed
from .jobs import CRASHED, TIMED_OUT
from .types import CompareTo, EpochMetrics, Progress, TrainResult, TrainSpec, to_plain

log = logging.getLogger(__name__)

PREFIX = "\x1eimgcls-progress "
POLL = 0.2


def cancel_event_name(job_id: str) -> str:
    return f"imgcls-cancel-{job_id}"


# ---------------------------------------------------------------- packing (both sides)


def pack(spec: TrainSpec) -> dict[str, Any]:
    """The spec with its files' bytes: image paths become names inside the job, and the model a retrain
    compares against travels too."""
    files: dict[str, bytes] = {}
    items = []
    for item in spec.items:
        name = f"images/{item.image_id}{Path(item.path).suffix or '.jpg'}"
        files[name] = Path(item.path).read_bytes()
        items.append(replace(item, path=name))
    compare = spec.compare
    if compare is not None:
        try:
            files["compare/model.pkl"] = Path(compare.model_path).read_bytes()
            compare = replace(compare, model_path="compare/model.pkl")
        except OSError:
            log.warning("run %s's model is missing; the retrain compares nothing", compare.run_id)
            compare = None
    return {"spec": replace(spec, items=tuple(items), out_dir="out", compare=compare), "files": files}


def unpack(packed: dict[str, Any], root: Path) -> TrainSpec:
    """The packed files written under `root`, and the spec with its paths pointing at them."""
    for name, data in packed["files"].items():
        path = root / name
        if root.resolve() not in path.resolve().parents:
            raise TrainingFailed(f"The job carries a file outside its folder ({name!r}).")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    spec: TrainSpec = packed["spec"]
    items = tuple(replace(i, path=str(root / i.path)) for i in spec.items)
    compare: Optional[CompareTo] = spec.compare
    if compare is not None:
        compare = replace(compare, model_path=str(root / compare.model_path))
    return replace(spec, items=items, out_dir=str(root / spec.out_dir), compare=compare)


def progress_message(event: Progress) -> dict[str, Any]:
    return {"kind": "progress", "event": to_plain(event)}


def progress_from(message: dict[str, Any]) -> Progress:
    e = dict(message["event"])
    if e.get("metrics"):
        e["metrics"] = EpochMetrics(**e["metrics"])
    return Progress(**e)


# ---------------------------------------------------------------- the task (on a Dask worker)


def run_packed(function: str, packed: dict[str, Any], topic: str, job_id: str,
               timeout: Optional[float] = None) -> dict[str, Any]:
    """Run `function` ("module:name") on the packed spec in a child process; return its result and files.

    The child is killed when the job's cancel event is set, when `timeout` seconds have passed since it started
    (the client enforces the limit too; this holds when the client is gone), and when the scheduler no longer
    wants the task (its client disconnected or cancelled it)."""
    from distributed import Event, get_worker
    from distributed.worker import thread_state

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    worker.log_event(topic, {"kind": "started", "worker": worker.address, "name": str(worker.name), "at": time.time()})
    cancel = Event(cancel_event_name(job_id))
    deadline = time.monotonic() + timeout + 30 if timeout else None  # a little after the client's own limit
    with tempfile.TemporaryDirectory(prefix="imgcls-job-") as tmp:
        root = Path(tmp)
        spec = unpack(packed, root)
        spec_path, result_path = root / "spec.pkl", root / "result.pkl"
        spec_path.write_bytes(pickle.dumps(spec))
        child = _take_child(function)
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        errors: list[str] = []
        threading.Thread(target=_tail, args=(child.stderr, errors), daemon=True).start()
        try:
            try:
                child.stdin.write(json.dumps({"function": function, "spec": str(spec_path),
                                              "result": str(result_path), "cwd": tmp}) + "\n")
                child.stdin.close()
            except OSError:  # it died while waiting: reported below as a crash
                pass
            while child.poll() is None:
                _forward(worker, topic, lines)
                if cancel.is_set() or not _wanted(worker, key):
                    raise JobCancelled("The job was cancelled.")
                if deadline and time.monotonic() > deadline:
                    raise JobTimedOut(TIMED_OUT)
                time.sleep(POLL)
            reader.join(10)  # the last lines, up to the end of its output
            _forward(worker, topic, lines)
        finally:
            _stop(child)  # the child, or what it left behind in its process group (data loader workers)
            _refill(function)  # the next job here starts without paying for the imports
            if cancel.is_set():
                try:
                    cancel.clear()  # nothing left on the scheduler for this job
                except Exception:  # noqa: BLE001
                    pass
        if not result_path.exists():
            tail = "\n".join(errors[-5:])
            raise TrainingFailed((CRASHED.format(where=" on the GPU worker", code=child.returncode) + " "
                                  + tail[-300:]).strip())
        outcome = pickle.loads(result_path.read_bytes())
        if "error" in outcome:
            raise outcome["error"]
        result: TrainResult = outcome["result"]
        return {"result": result, "files": _outputs(result, Path(spec.out_dir)), "worker": worker.address}


# One spare child per worker process: started after each job, it imports the job's module and runs its
# `warm_up` (torch, fastai; never CUDA), then waits on stdin for the job. It exits with the worker.
_spare: Optional[tuple[str, subprocess.Popen]] = None
_spare_lock = threading.Lock()


def _start_child(function: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgcls.remote", "--serve", function, str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_child_env())


def _child_env() -> dict[str, str]:
    """The worker's environment without what Dask's nanny set for its task threads
    (`distributed.nanny.pre-spawn-environ`): OpenMP and BLAS pinned to one thread each, which would leave a job's
    CPU work on one core, and MALLOC_TRIM_THRESHOLD_=65536, which made CPU training 2.5x slower here (glibc
    hands memory back after every batch). A value someone set differently stays."""
    env = dict(os.environ)
    try:
        import dask

        pinned = dask.config.get("distributed.nanny.pre-spawn-environ") or {}
    except Exception:  # noqa: BLE001 - no dask config: nothing was pinned by it
        pinned = {}
    for key, value in pinned.items():
        if env.get(key) == str(value):
            del env[key]
    return env


def _take_child(function: str) -> subprocess.Popen:
    global _spare
    module = function.partition(":")[0]
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        warmed_for, child = spare
        if warmed_for == module and child.poll() is None:
            return child
        _stop(child)
    return _start_child(function)


def _refill(function: str) -> None:
    global _spare
    with _spare_lock:
        if _spare is None or _spare[1].poll() is not None:
            _spare = (function.partition(":")[0], _start_child(function))


def _wanted(worker, key: Optional[str]) -> bool:
    """Whether the scheduler still wants this task run here (not cancelled, its client not gone)."""
    if key is None:
        return True
    try:
        ts = worker.state.tasks.get(key)
    except Exception:  # noqa: BLE001 - a worker whose state cannot be read: keep going
        return True
    return ts is not None and ts.state not in ("cancelled", "released", "forgotten")


def _outputs(result: TrainResult, out_dir: Path) -> dict[str, bytes]:
    """The files a run leaves in its folder (the model and the plots), by name."""
    names = {Path(result.model_path).name, *(Path(p).name for _, p in result.artefacts)}
    if result.onnx_path:
        names.add(Path(result.onnx_path).name)
    return {name: (out_dir / name).read_bytes() for name in names if (out_dir / name).is_file()}


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        if line.startswith(PREFIX):
            lines.put(line[len(PREFIX):])


def _tail(stream, errors: list[str]) -> None:
    for line in stream:
        errors.append(line.rstrip())
        del errors[:-50]


def _forward(worker, topic: str, lines: queue.Queue) -> None:
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return
        try:
            worker.log_event(topic, json.loads(line))
        except ValueError:
            continue


def _stop(child: subprocess.Popen) -> None:
    """The child and anything it started, in its process group: SIGTERM while the child lives (a few seconds to
    exit), then SIGKILL for whatever is left."""
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(5.0)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        child.wait(5.0)
    except subprocess.TimeoutExpired:
        log.warning("the training process %d did not exit", child.pid)


# ---------------------------------------------------------------- the child process


def child_main(argv: list[str]) -> int:
    """`python -m imgcls.remote --serve MODULE:FUNCTION PARENT_PID`: warm up (the module's `warm_up`, if it has
    one), read one job from stdin ({"function", "spec", "result", "cwd"}), run it, write its outcome."""
    import warnings

    from .jobs import exit_with_parent, ignore_interrupts, run_job

    _, function, parent = argv
    exit_with_parent(int(parent))  # the worker died: so does its job (and the GPU memory it holds)
    ignore_interrupts()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not for people
    module = import_module(function.partition(":")[0])
    warm = getattr(module, "warm_up", None)
    if callable(warm):
        try:
            warm()
        except Exception:  # noqa: BLE001 - the job meets the same problem and reports it properly
            log.exception("warm-up failed")
    line = sys.stdin.readline()
    if not line:
        return 0  # the worker no longer needs this spare
    job = json.loads(line)
    os.chdir(job["cwd"])
    module_name, _, name = job["function"].partition(":")
    fn: Callable = getattr(import_module(module_name), name)
    spec = pickle.loads(Path(job["spec"]).read_bytes())
    out = sys.stdout

    def progress(event: Progress) -> None:
        out.write(PREFIX + json.dumps(progress_message(event)) + "\n")
        out.flush()

    kind, value, trace = run_job(fn, spec, progress, where=" on the GPU worker")
    if trace:
        sys.stderr.write(trace)
    outcome: dict[str, Any] = {kind: value}
    tmp = Path(job["result"]).with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
