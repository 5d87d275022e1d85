"""Run jobs on GPU hosts through a Dask distributed scheduler, behind the same interface as ProcessJobExecutor.

    executor = DaskJobExecutor("tcp://gpu-box:8786")
    future = executor.submit(train, spec, progress=print, timeout=3600)
    result = future.result()     # a TrainResult whose files are now in spec.out_dir, on this host
    future.cancel()              # sets the job's cancel event: the worker kills the training process
    executor.workers()           # [{"name": ..., "gpus": 1, "busy": False}, ...]

Each job asks for `resources={"GPU": 1}`, so a worker started with `--resources GPU=1` runs
one at a time. The job carries its dataset (the stored 512 px copies, and the model a
retrain compares against) and the worker sends back the model and the plots as bytes; they
are written into the run's folder here and the model's sha256 is checked. Progress comes
back through the scheduler's events (`log_event` / `subscribe_topic`).

A worker that dies mid-job: the scheduler starts the job again on another worker (a nanny's
restarted one counts), and the progress callback gets a "notice" saying so ("worker lost,
retrying on another GPU"). A second loss fails the job at once. The time limit counts from
when a worker starts the job; the worker enforces it too, and stops a job whose client is gone. A
scheduler that cannot be reached fails the job at once with a message saying so; the next
job tries to connect again, so a scheduler that comes back is used without a restart.
The bot host never imports torch or fastai for this.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ImgclsError, InvalidInput, JobCancelled, JobTimedOut, NotReady, TrainingFailed
from .jobs import TIMED_OUT, JobFuture, Watchers, safe_progress
from .remote import cancel_event_name, pack, progress_from
from .types import Progress, TrainResult, TrainSpec

log = logging.getLogger(__name__)

RESOURCES = {"GPU": 1}


class DaskJobExecutor:
    """A concurrent.futures-style executor whose jobs run on the workers of a Dask scheduler."""

    def __init__(self, address: str, *, security: Any = None, connect_timeout: float = 10.0, poll: float = 0.2,
                 retries: int = 1, waiting_note_every: float = 15.0) -> None:
        self.address = address
        self.security = security
        self.connect_timeout = connect_timeout
        self.poll = poll
        self.retries = retries
        self.waiting_note_every = waiting_note_every
        self._client = None
        self._connect_lock = threading.Lock()  # held while connecting: never by submit(), which must not block
        self._watchers = Watchers()
        # imported once, here: two threads importing distributed at once can meet a half-initialised module
        import distributed  # noqa: F401
        import distributed.scheduler  # noqa: F401

    @classmethod
    def from_settings(cls, address: str, *, tls_ca_file: str = "", tls_cert: str = "", tls_key: str = "",
                      **kwargs: Any) -> "DaskJobExecutor":
        """The executor for DASK_SCHEDULER and, when set, DASK_TLS_CA_FILE / DASK_TLS_CERT / DASK_TLS_KEY."""
        security = None
        if tls_ca_file or tls_cert or tls_key:
            if not (tls_ca_file and tls_cert and tls_key):
                raise InvalidInput("For TLS to the Dask scheduler set all three of DASK_TLS_CA_FILE, DASK_TLS_CERT "
                                   "and DASK_TLS_KEY.")
            from distributed.security import Security

            security = Security(tls_ca_file=tls_ca_file, tls_client_cert=tls_cert, tls_client_key=tls_key,
                                require_encryption=True)
        return cls(address.strip(), security=security, **kwargs)

    # ---------------------------------------------------------- the connection

    def client(self):
        """The connected Client, connecting (again) if needed; NotReady when the scheduler cannot be reached."""
        from distributed import Client

        with self._connect_lock:
            if self._client is not None and self._client.status == "running":
                return self._client
            if self._client is not None:
                try:
                    self._client.close(timeout=2)
                except Exception:  # noqa: BLE001 - a broken client is replaced either way
                    log.debug("closing the old Dask client failed", exc_info=True)
                self._client = None
            try:
                # a plain TCP knock first: a Client that fails to connect leaves its IO thread behind
                self._knock()
                self._client = Client(self.address, security=self.security, timeout=self.connect_timeout,
                                      set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, bad address, TLS...: all "not reachable"
                raise NotReady(f"The GPU cluster at {self.address} is not reachable ({type(exc).__name__}); check "
                               "that its scheduler is running (`dask scheduler`) and that DASK_SCHEDULER is right. "
                               "Everything else keeps working.") from None
            return self._client

    def _knock(self) -> None:
        """Raise OSError unless something accepts TCP connections at the scheduler's host and port."""
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port

        scheme, location = parse_address(self.address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location, 8786)
        socket.create_connection((host, port), timeout=min(self.connect_timeout, 5.0)).close()

    def workers(self) -> list[dict[str, Any]]:
        """The scheduler's workers: name, address, GPUs, and whether a job is running there."""
        client = self.client()
        info = client.scheduler_info(n_workers=-1)["workers"]
        processing = client.processing()
        out = []
        for address, w in info.items():
            out.append({"name": str(w.get("name", address)), "address": address,
                        "gpus": int((w.get("resources") or {}).get("GPU", 0)), "busy": bool(processing.get(address))})
        return sorted(out, key=lambda w: (w["name"], w["address"]))

    def gpu_slots(self) -> int:
        """How many jobs the cluster can run at once (its workers' GPUs together)."""
        return sum(w["gpus"] for w in self.workers())

    def describe(self) -> dict[str, Any]:
        """Where jobs run, for people: the cluster's workers (and so how many jobs at once), or why it cannot be
        reached."""
        try:
            workers = self.workers()
        except Exception as exc:  # noqa: BLE001 - shown to people as "not reachable"
            return {"kind": "dask", "address": self.address, "error": str(exc)}
        return {"kind": "dask", "address": self.address, "workers": workers,
                "slots": sum(w["gpus"] for w in workers)}

    # ---------------------------------------------------------- jobs

    def submit(self, fn: Callable[..., Any], arg: TrainSpec, *, progress: Optional[Callable[[Any], None]] = None,
               timeout: Optional[float] = None) -> JobFuture:
        """Run `fn(arg, progress)` on a GPU worker; `fn` must be importable there by name. The time limit counts
        from when a worker starts the job, not while it waits for one."""
        return self._watchers.start(self._watch, f"dask-job-{getattr(fn, '__name__', 'fn')}", fn, arg, progress,
                                    timeout)

    def _watch(self, future: JobFuture, fn, arg: TrainSpec, progress, timeout: Optional[float]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        emit = safe_progress(progress)
        try:
            result = self._run(future, fn, arg, emit, timeout)
        except ImgclsError as exc:
            future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - the future must not stay pending
            log.exception("Dask job failed")
            future.set_exception(TrainingFailed(f"The job failed on the GPU cluster: {type(exc).__name__}: {exc}"))
        else:
            future.set_result(result)

    def _run(self, future: JobFuture, fn, spec: TrainSpec, emit: Callable[[Progress], None],
             timeout: Optional[float]) -> TrainResult:
        from .remote import run_packed

        client = self.client()
        job_id = uuid.uuid4().hex
        topic = f"imgcls-job-{job_id}"
        messages: queue.Queue = queue.Queue()  # filled on the client's IO thread, read only here
        client.subscribe_topic(topic, lambda event: messages.put(event[1]))
        try:
            packed = pack(spec)
            emit(Progress("stage", message=f"sending the job to the GPU cluster ({_mb(_size(packed))})"))
            with warnings.catch_warnings():  # the job carries its images on purpose: a workshop's are small
                warnings.filterwarnings("ignore", message="Sending large graph")
                task = client.submit(run_packed, f"{fn.__module__}:{fn.__name__}", packed, topic, job_id, timeout,
                                     resources=RESOURCES, pure=False, key=f"imgcls-{spec.run_id or 'job'}-{job_id}")
            reply = self._follow(client, task, job_id, future, messages, emit, timeout)
        finally:
            try:
                client.unsubscribe_topic(topic)
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass
        return receive(reply, spec)

    def _follow(self, client, task, job_id: str, future: JobFuture, messages: queue.Queue,
                emit: Callable[[Progress], None], timeout: Optional[float]) -> dict[str, Any]:
        """Relay the task's events until it ends; count lost workers, enforce cancel and the time limit."""
        from distributed.scheduler import KilledWorker

        current: Optional[dict[str, Any]] = None  # the "started" message of the attempt running now
        lost, deadline, last_check, last_note = 0, None, 0.0, 0.0

        def lose() -> None:
            nonlocal lost, current
            lost, current = lost + 1, None
            if lost <= self.retries:
                emit(Progress("notice", message="worker lost, retrying on another GPU"))

        while True:
            while not messages.empty():
                message = messages.get_nowait()
                if message.get("kind") == "started":
                    if current is not None and current.get("worker") != message.get("worker"):
                        lose()  # it started elsewhere before we noticed the loss
                    current = message
                    if deadline is None and timeout:
                        deadline = time.monotonic() + timeout
                    emit(Progress("stage", message=f"running on GPU worker {message.get('name') or message.get('worker')}"))
                elif message.get("kind") == "progress":
                    emit(progress_from(message))
            if lost > self.retries:
                self._cancel(client, task, job_id)
                raise TrainingFailed(f"The GPU worker running this job was lost {lost} times; the run is stopped. "
                                     "Check the GPU hosts (memory, drivers, network), then train again.")
            if future._stop.is_set():
                self._cancel(client, task, job_id)
                raise JobCancelled("The job was cancelled.")
            if deadline and time.monotonic() > deadline:
                self._cancel(client, task, job_id)
                raise JobTimedOut(TIMED_OUT)
            if task.done():
                break
            now = time.monotonic()
            if now - last_check >= 1.0:
                last_check = now
                gpus = self._gpu_workers(client)
                if current is not None and gpus is not None and current.get("worker") not in gpus:
                    lose()
                if current is None and gpus == {} and now - last_note >= self.waiting_note_every:
                    last_note = now
                    emit(Progress("stage", message="waiting for a GPU worker: none is connected to the cluster at "
                                                   f"{self.address}"))
            time.sleep(self.poll)
        if task.status == "cancelled":  # the client lost its connection, and with it the task
            raise TrainingFailed(f"The connection to the GPU cluster at {self.address} was lost while the job ran; "
                                 "the run is stopped. Train again once the cluster is reachable.")
        try:
            return task.result()
        except KilledWorker:
            raise TrainingFailed("The GPU workers running this job kept dying; the run is stopped. Check the GPU "
                                 "hosts (memory, drivers), then train again.") from None

    def _gpu_workers(self, client) -> Optional[dict[str, int]]:
        """The workers with a GPU, address -> GPUs; None when the scheduler does not answer."""
        try:
            info = client.scheduler_info(n_workers=-1)["workers"]
        except Exception:  # noqa: BLE001 - unknown is not "none"
            return None
        return {a: int((w.get("resources") or {}).get("GPU", 0)) for a, w in info.items()
                if (w.get("resources") or {}).get("GPU", 0)}

    def _cancel(self, client, task, job_id: str) -> None:
        """Tell the task to kill its training process, and forget the task."""
        from distributed import Event

        try:
            Event(cancel_event_name(job_id), client=client).set()
            task.cancel()
        except Exception:  # noqa: BLE001 - the scheduler may be gone; the worker's child dies with it
            log.warning("could not cancel Dask job %s", job_id, exc_info=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._watchers.close(wait, cancel_futures)
        with self._connect_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close(timeout=5)
            except Exception:  # noqa: BLE001
                log.debug("closing the Dask client failed", exc_info=True)


def receive(reply: dict[str, Any], spec: TrainSpec) -> TrainResult:
    """The worker's reply made local: its files written into spec.out_dir, the paths it names pointing there
    (and at this host's images), the model's sha256 checked."""
    out_dir = Path(spec.out_dir)
    result: TrainResult = reply["result"]
    files: dict[str, bytes] = reply["files"]
    for name in files:
        if "/" in name or "\\" in name or name.startswith("."):
            raise TrainingFailed(f"The GPU worker sent back a file with an odd name ({name!r}).")
    model_name = Path(result.model_path).name
    model = files.get(model_name)
    if model is None or hashlib.sha256(model).hexdigest() != result.model_sha256:  # checked before anything is written
        raise TrainingFailed("The model that came back from the GPU worker does not match its checksum; train again.")
    onnx_name = Path(result.onnx_path).name if result.onnx_path else ""
    if onnx_name and onnx_name not in files:  # the .pkl is the model; predictions can load it
        log.warning("run %s: the GPU worker sent no ONNX model; predictions will load the fastai model", spec.run_id)
        result, onnx_name = replace(result, onnx_path="", onnx_sha256=""), ""
    if onnx_name and hashlib.sha256(files[onnx_name]).hexdigest() != result.onnx_sha256:
        raise TrainingFailed("The ONNX model that came back from the GPU worker does not match its checksum; train "
                             "again.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out_dir / name)
    model = out_dir / model_name
    paths = {item.image_id: item.path for item in spec.items}
    return replace(result, model_path=str(model), onnx_path=str(out_dir / onnx_name) if onnx_name else "",
                   artefacts=tuple((name, str(out_dir / Path(p).name)) for name, p in result.artefacts),
                   top_losses=tuple(replace(t, path=paths.get(t.image_id, t.path)) for t in result.top_losses))


def _size(packed: dict[str, Any]) -> int:
    return sum(len(b) for b in packed["files"].values())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


__all__ = ["DaskJobExecutor", "RESOURCES", "receive"]
