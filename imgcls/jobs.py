"""Run jobs in separate processes, one job per process, behind a concurrent.futures-style executor.

    executor = ProcessJobExecutor(max_workers=1, warm=warm_up)
    future = executor.submit(train, spec, progress=print, timeout=3600)
    result = future.result()          # a TrainResult, or raises TrainingFailed & co
    future.cancel()                   # also stops a job that is already running

Each job gets a fresh spawned process, so GPU memory is freed when it ends and a crash
(segfault, out-of-memory kill) fails only that job. Progress events come back over a
queue and are handed to the `progress` callback on a watcher thread. Only picklable
plain data crosses the boundary. A remote GPU executor can offer the same `submit`.

With `warm`, the executor keeps one spare process that has already run `warm()` (say,
imported fastai) waiting for the next job, so a job starts without paying for imports.
The spare is started at construction and again after each job, never while one runs.
With `keep_warm=SECONDS` it is lighter on an idle host: no spare at construction, one when
`warm_soon()` is called (a run was queued) and after each job, stopped once no job has run
for that long; `keep_warm=0` never keeps one.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Callable, Optional

from .errors import ImgclsError, JobCancelled, JobTimedOut, TrainingFailed

log = logging.getLogger(__name__)

_CTX = mp.get_context("spawn")

TIMED_OUT = "The job ran past its time limit and was stopped; try fewer epochs, fewer images or a smaller image size."
CRASHED = "The training process{where} stopped unexpectedly (exit code {code}); it may have run out of memory. " \
          "Try a smaller batch or image size."


def safe_progress(progress: Optional[Callable[[Any], None]]) -> Callable[[Any], None]:
    """The progress callback, made harmless: a broken progress display must not kill the job."""
    def emit(event: Any) -> None:
        if progress is None:
            return
        try:
            progress(event)
        except Exception:
            log.exception("progress callback failed")
    return emit
_LIVE: set = set()  # worker processes still running


@atexit.register
def _stop_live_workers() -> None:
    """On exit, stop running jobs rather than wait for them (they are not daemonic)."""
    for proc in list(_LIVE):
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def _exit_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """A worker whose caller died (killed, crashed) stops too, instead of running for nobody."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(every)


def exit_with_parent(parent_pid: Optional[int] = None) -> None:
    """For worker processes: exit within a second of the process that started this one dying, kill -9
    included (the orphan is re-parented, and a thread notices). Pass the parent's pid when you can (pool
    `initargs=(os.getpid(),)`): a parent that died before this runs is then noticed too. Not the kernel's
    PR_SET_PDEATHSIG: that fires when the parent's *thread* that started us ends, and pools and the job
    executor start workers from short-lived threads."""
    parent = parent_pid if parent_pid is not None else os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def ignore_interrupts() -> None:
    """For worker processes: a Ctrl-C typed at the terminal reaches the whole process group, but it is
    the parent's to handle; it stops its workers itself, after recording where things stood."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_init(parent_pid: Optional[int] = None) -> None:
    """The initializer for every pool of worker processes (ingest, prediction): no Ctrl-C of their own,
    and no life after their parent's. Use `initializer=worker_init, initargs=(os.getpid(),)`."""
    ignore_interrupts()
    exit_with_parent(parent_pid)


def _child(warm: Optional[Callable[[], Any]], jobs: Any, events: Any, parent_pid: int) -> None:
    """Runs in the worker process: warm up, wait for one job, run it, report, exit."""
    ignore_interrupts()
    import logging as _logging
    import warnings

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="exit-with-parent", daemon=True).start()
    _logging.basicConfig(level=_logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not for people
    if warm is not None:
        try:
            warm()
        except Exception:  # the job itself will meet the same problem and report it properly
            _logging.getLogger(__name__).exception("warm-up failed")
    job = jobs.get()
    if job is None:
        return
    fn, arg = job
    events.put(run_job(fn, arg, lambda event: events.put(("progress", event, None))))


def run_job(fn: Callable[..., Any], arg: Any, progress: Callable[[Any], None], where: str = "") -> tuple:
    """`fn(arg, progress)` as an outcome: ("result", value, None), or ("error", exception, traceback or None). Our
    own errors pass as they are; anything else becomes TrainingFailed, with the traceback for the log."""
    try:
        return ("result", fn(arg, progress), None)
    except ImgclsError as exc:
        return ("error", exc, None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        return ("error", TrainingFailed(f"The job crashed{where}: {type(exc).__name__}: {exc}"), traceback.format_exc())


class _Worker:
    """One spawned process (not daemonic: a job may start processes of its own) and its two queues."""

    def __init__(self, warm: Optional[Callable[[], Any]]) -> None:
        self.jobs, self.events = _CTX.Queue(), _CTX.Queue()
        self.proc = _CTX.Process(target=_child, args=(warm, self.jobs, self.events, os.getpid()), daemon=False)
        self.proc.start()
        _LIVE.add(self.proc)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc.join()
        _LIVE.discard(self.proc)
        self.jobs.close()
        self.events.close()


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


class Watchers:
    """An executor's watcher threads, one per submitted job: each runs `watch(future, *args)` and settles the
    future. Shared by the local and the Dask executor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[tuple[threading.Thread, JobFuture]] = []
        self.closed = False

    def start(self, watch: Callable[..., None], name: str, *args: Any) -> JobFuture:
        if self.closed:
            raise RuntimeError("the executor is shut down")
        future = JobFuture()
        thread = threading.Thread(target=watch, args=(future, *args), name=name, daemon=True)
        with self._lock:
            self._threads = [(t, f) for t, f in self._threads if t.is_alive()] + [(thread, future)]
        thread.start()
        return future

    def close(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Accept no more jobs; optionally cancel the waiting ones (and stop running ones), then wait."""
        with self._lock:
            self.closed = True
            threads = list(self._threads)
        if cancel_futures:
            for _, future in threads:
                future.cancel()
        if wait:
            for thread, _ in threads:
                thread.join()


class ProcessJobExecutor:
    """A concurrent.futures-style executor: `max_workers` slots, a fresh spawned process per job."""

    def __init__(self, max_workers: int = 1, *, warm: Optional[Callable[[], Any]] = None, poll: float = 0.2,
                 keep_warm: Optional[float] = None) -> None:
        self._slots = threading.Semaphore(max_workers)
        self._keep_warm = keep_warm
        self._last_job = time.monotonic()
        self._running = 0
        self._max_workers = max_workers
        self._poll = poll
        self._warm = warm
        self._spare: Optional[_Worker] = None
        self._lock = threading.Lock()
        self._watchers = Watchers()
        if keep_warm is None:
            self._refill_spare()

    def warm_soon(self) -> None:
        """A run is on its way: have a spare ready (unless keep_warm is 0). Never while every slot runs a job: the
        end of a job refills the spare anyway, and importing torch beside a training job only slows it."""
        if self._keep_warm == 0:
            return
        with self._lock:
            self._last_job = time.monotonic()
            busy = self._running >= self._max_workers
        if not busy:
            self._refill_spare()
        self._cool_later()

    def _cool_later(self) -> None:
        if not self._keep_warm:
            return
        timer = threading.Timer(self._keep_warm + 0.5, self._cool)
        timer.daemon = True
        timer.start()

    def _cool(self) -> None:
        """Stop the spare once no job has run or been announced for keep_warm seconds."""
        with self._lock:
            idle = time.monotonic() - self._last_job >= (self._keep_warm or 0)
            if not idle or self._running:
                return
            spare, self._spare = self._spare, None
        if spare is not None:
            log.info("no training for %.0f s: stopping the warm training process", self._keep_warm)
            spare.stop()

    def submit(self, fn: Callable[..., Any], arg: Any, *, progress: Optional[Callable[[Any], None]] = None,
               timeout: Optional[float] = None) -> JobFuture:
        """Run `fn(arg, progress_callback)` in a new process. `fn` must be importable by name."""
        return self._watchers.start(self._watch, f"job-{getattr(fn, '__name__', 'fn')}", fn, arg, progress, timeout)

    def _refill_spare(self) -> None:
        if self._warm is None or self._keep_warm == 0:
            return
        with self._lock:
            self._last_job = time.monotonic()
            if self._watchers.closed or (self._spare is not None and self._spare.proc.is_alive()):
                return
            self._spare = _Worker(self._warm)

    def _take_worker(self) -> _Worker:
        with self._lock:
            worker, self._spare = self._spare, None
        if worker is not None and worker.proc.is_alive():
            return worker
        if worker is not None:
            worker.stop()
        return _Worker(self._warm)

    def _watch(self, future: JobFuture, fn: Callable[..., Any], arg: Any,
               progress: Optional[Callable[[Any], None]], timeout: Optional[float]) -> None:
        with self._slots:
            if not future.set_running_or_notify_cancel():
                return
            with self._lock:
                self._running += 1
            worker = self._take_worker()
            worker.jobs.put((fn, arg))
            deadline = time.monotonic() + timeout if timeout else None
            try:
                outcome = self._pump(future, worker, progress, deadline)
            except Exception as exc:  # never leave the future pending
                log.exception("job watcher failed")
                outcome = ("error", TrainingFailed(f"The job could not be followed: {exc}"), None)
            finally:
                worker.stop()
                with self._lock:
                    self._running -= 1
            self._refill_spare()
            self._cool_later()
            kind, value, trace = outcome
            if kind == "result":
                future.set_result(value)
            else:
                if trace:
                    log.error("job %s failed:\n%s", getattr(fn, "__name__", fn), trace)
                future.set_exception(value)

    def _pump(self, future: JobFuture, worker: _Worker, progress: Optional[Callable[[Any], None]],
              deadline: Optional[float]) -> tuple:
        emit = safe_progress(progress)
        while True:
            if future._stop.is_set():
                return ("error", JobCancelled("The job was cancelled."), None)
            if deadline and time.monotonic() > deadline:
                return ("error", JobTimedOut(TIMED_OUT), None)
            try:
                kind, value, trace = worker.events.get(timeout=self._poll)
            except queue.Empty:
                if worker.proc.is_alive():
                    continue
                try:  # the last message may land just after the process exits
                    kind, value, trace = worker.events.get(timeout=1.0)
                except queue.Empty:
                    return ("error", TrainingFailed(CRASHED.format(where="", code=worker.proc.exitcode)), None)
            if kind == "progress":
                emit(value)
                continue
            return (kind, value, trace)

    def describe(self) -> dict[str, Any]:
        """Where jobs run, for people: on this host, so many at a time, and whether a process is warm."""
        with self._lock:
            warm = self._spare is not None and self._spare.proc.is_alive()
        return {"kind": "local", "slots": self._max_workers, "warm": warm}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more jobs; optionally cancel the waiting ones (and stop running ones), then wait."""
        self._watchers.closed = True  # no spare is started from here on
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.stop()
        self._watchers.close(wait, cancel_futures)
