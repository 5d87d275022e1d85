"""Run jobs in separate processes, one job per process, behind a concurrent.futures-style executor.

    executor = ProcessJobExecutor(max_workers=1)
    future = executor.submit(train, spec, progress=print, timeout=3600)
    result = future.result()          # a TrainResult, or raises TrainingFailed & co
    future.cancel()                   # also stops a job that is already running

Each job gets a fresh spawned process, so GPU memory is freed when it ends and a crash
(segfault, out-of-memory kill) fails only that job. Progress events come back over a
queue and are handed to the `progress` callback on a watcher thread. Only picklable
plain data crosses the boundary. A remote GPU executor can offer the same `submit`.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Callable, Optional

from .errors import ImgclsError, JobCancelled, JobTimedOut, TrainingFailed

log = logging.getLogger(__name__)

_CTX = mp.get_context("spawn")
_LIVE: set = set()  # job processes still running


@atexit.register
def _stop_live_jobs() -> None:
    """On exit, stop running jobs rather than wait for them (they are not daemonic)."""
    for proc in list(_LIVE):
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def _exit_with_parent(parent_pid: int) -> None:
    """A job whose caller died (killed, crashed) stops too, instead of training for nobody."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _child(fn: Callable[..., Any], arg: Any, events: Any, parent_pid: int) -> None:
    """Runs in the worker process."""
    import logging as _logging
    import warnings

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _logging.basicConfig(level=_logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not for people
    try:
        result = fn(arg, lambda event: events.put(("progress", event, None)))
    except ImgclsError as exc:
        events.put(("error", exc, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        events.put(("error", TrainingFailed(f"The job crashed: {type(exc).__name__}: {exc}"), traceback.format_exc()))
    else:
        events.put(("result", result, None))


class JobFuture(Future):
    """A Future whose cancel() also stops a running job."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.done():
            return False
        self._stop.set()
        return True


class ProcessJobExecutor:
    """A concurrent.futures-style executor: `max_workers` slots, a fresh spawned process per job."""

    def __init__(self, max_workers: int = 1, *, poll: float = 0.2) -> None:
        self._slots = threading.Semaphore(max_workers)
        self._poll = poll
        self._threads: list[tuple[threading.Thread, JobFuture]] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], arg: Any, *, progress: Optional[Callable[[Any], None]] = None,
               timeout: Optional[float] = None) -> JobFuture:
        """Run `fn(arg, progress_callback)` in a new process. `fn` must be importable by name."""
        if self._shutdown:
            raise RuntimeError("the executor is shut down")
        future = JobFuture()
        thread = threading.Thread(target=self._watch, args=(future, fn, arg, progress, timeout),
                                  name=f"job-{getattr(fn, '__name__', 'fn')}", daemon=True)
        self._threads = [(t, f) for t, f in self._threads if t.is_alive()] + [(thread, future)]
        thread.start()
        return future

    def _watch(self, future: JobFuture, fn: Callable[..., Any], arg: Any,
               progress: Optional[Callable[[Any], None]], timeout: Optional[float]) -> None:
        with self._slots:
            if not future.set_running_or_notify_cancel():
                return
            events = _CTX.Queue()
            # Not daemonic: a job may start processes of its own (DataLoader workers, pools).
            proc = _CTX.Process(target=_child, args=(fn, arg, events, os.getpid()), daemon=False)
            proc.start()
            _LIVE.add(proc)
            deadline = time.monotonic() + timeout if timeout else None
            try:
                outcome = self._pump(future, proc, events, progress, deadline)
            except Exception as exc:  # never leave the future pending
                log.exception("job watcher failed")
                outcome = ("error", TrainingFailed(f"The job could not be followed: {exc}"), None)
            finally:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
                    if proc.is_alive():
                        proc.kill()
                proc.join()
                _LIVE.discard(proc)
                events.close()
            kind, value, trace = outcome
            if kind == "result":
                future.set_result(value)
            else:
                if trace:
                    log.error("job %s failed:\n%s", getattr(fn, "__name__", fn), trace)
                future.set_exception(value)

    def _pump(self, future: JobFuture, proc: Any, events: Any, progress: Optional[Callable[[Any], None]],
              deadline: Optional[float]) -> tuple:
        while True:
            if future._stop.is_set():
                return ("error", JobCancelled("The job was cancelled."), None)
            if deadline and time.monotonic() > deadline:
                return ("error", JobTimedOut("The job ran past its time limit and was stopped; "
                                             "try fewer epochs, fewer images or a smaller image size."), None)
            try:
                kind, value, trace = events.get(timeout=self._poll)
            except queue.Empty:
                if not proc.is_alive():
                    try:  # the last message may land just after the process exits
                        kind, value, trace = events.get(timeout=1.0)
                    except queue.Empty:
                        return ("error", TrainingFailed(
                            f"The training process stopped unexpectedly (exit code {proc.exitcode}); "
                            "it may have run out of memory. Try a smaller batch or image size."), None)
                else:
                    continue
            if kind == "progress":
                if progress is not None:
                    try:
                        progress(value)
                    except Exception:  # a broken progress display must not kill the job
                        log.exception("progress callback failed")
                continue
            return (kind, value, trace)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more jobs; optionally cancel the waiting ones (and stop running ones), then wait."""
        self._shutdown = True
        if cancel_futures:
            for _, future in self._threads:
                future.cancel()
        if wait:
            for thread, _ in self._threads:
                thread.join()
