"""Training on a real Dask cluster on this machine (`dask scheduler`, `dask worker --resources GPU=1`, on the
CPU): progress, the model and its checksum coming back, two jobs at once, a worker's death, cancel, an
unreachable scheduler and a cluster with no GPU worker."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgcls.collect import add_files, folder_files
from imgcls.dask_jobs import DaskJobExecutor
from imgcls.errors import JobCancelled, JobTimedOut, NotReady, TrainingFailed
from imgcls.jobs import ProcessJobExecutor
from imgcls.predict import Predictor
from imgcls.runs import RunParams, prepare_run, record_outcome, train_workshop
from imgcls.store import Store
from imgcls.train import sha256_file, train
from imgcls.types import ImageMeta
from tests.fakes.dask_cluster import dask_cluster
from tests.fakes.procs import alive, descendants

from ..conftest import jpeg_bytes, make_image, write_image_folders

LABELS = ["circles", "squares", "triangles"]
QUICK = RunParams(arch="lite0", epochs=1, size=64, bs=16, suspects="none")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("dask"), workers=2) as c:
        yield c


def workshop(root: Path, name: str = "shapes", per_label: int = 10) -> tuple[Store, int]:
    photos = write_image_folders(root / f"photos-{name}", per_label=per_label, size=64)
    store = Store(root / "data")
    wid = store.create_workshop(name, LABELS)["id"]
    add_files(store, wid, folder_files(photos, LABELS), meta=ImageMeta(source="folder", added_by="tester"))
    return store, wid


def test_a_real_job_trains_on_a_worker_and_its_model_comes_back(cluster, tmp_path):
    store, wid = workshop(tmp_path)
    events = []
    executor = DaskJobExecutor(cluster.address)
    run = train_workshop(store, wid, QUICK, executor, progress=events.append, timeout=300)
    assert run["status"] == "done", run["error"]
    assert Path(run["model_path"]).parent == store.run_dir(run["id"])  # a path in the bot's store
    assert sha256_file(run["model_path"]) == run["model_sha256"]
    assert all(Path(p).parent == store.run_dir(run["id"]) and Path(p).is_file() for p in run["artefacts"].values())
    assert all(Path(t["path"]).is_relative_to(store.images_dir) for t in run["top_losses"])
    kinds = [e.kind for e in events]
    assert kinds.count("epoch_end") == 2 and "epoch_start" in kinds
    assert any(e.kind == "stage" and e.message.startswith("running on GPU worker gpu-") for e in events)
    assert [e["epoch"] for e in run["epochs"]] == [0, 1]

    # the same spec and seed trained locally gives the same model
    local = train_workshop(store, wid, QUICK, ProcessJobExecutor(), timeout=300)
    images = [jpeg_bytes(make_image(kind, 7000 + i, 64)) for i, kind in enumerate(LABELS * 2)]
    remote_p = Predictor().predict_many(run["model_path"], run["model_sha256"], images, k=3)
    local_p = Predictor().predict_many(local["model_path"], local["model_sha256"], images, k=3)
    for a, b in zip(remote_p, local_p):
        assert a.label == b.label
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-4)
    executor.shutdown()
    store.close()


def test_two_jobs_from_two_servers_run_on_two_workers_at_once(cluster, tmp_path):
    jobs = {}
    executor = DaskJobExecutor(cluster.address)
    assert executor.describe()["slots"] == 2
    assert [w["busy"] for w in executor.describe()["workers"]] == [False, False]
    training = threading.Barrier(3)
    try:
        for name in ("school-a", "school-b"):
            store, wid = workshop(tmp_path / name, name, per_label=14)
            run_id, spec = prepare_run(store, wid, RunParams(arch="lite0", epochs=3, size=64, bs=8, suspects="none"))
            times: dict = {}

            def progress(e, times=times):
                if e.kind == "epoch_start" and "first_epoch" not in times:
                    times["first_epoch"] = time.monotonic()
                    training.wait(120)  # both are training now: the status says both workers are busy
                    training.wait(120)
                if e.kind == "stage" and e.message.startswith("running on GPU worker"):
                    times["worker"] = e.message.rsplit(" ", 1)[1]
            jobs[name] = (store, run_id, executor.submit(train, spec, progress=progress, timeout=300), times)
        training.wait(240)
        busy = executor.describe()["workers"]
        training.wait(10)
        assert [(w["name"], w["busy"]) for w in busy] == [("gpu-0", True), ("gpu-1", True)]
        for name, (store, run_id, future, times) in jobs.items():
            future.result(300)
            assert record_outcome(store, run_id, future)["status"] == "done"
        a, b = (jobs[n][3] for n in ("school-a", "school-b"))
        assert {a["worker"], b["worker"]} == {"gpu-0", "gpu-1"}
    finally:
        executor.shutdown(cancel_futures=True)
        for store, *_ in jobs.values():
            store.close()


def assert_gone(pids, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pids), f"still running: {alive(pids)}"


def start_and_wait_for_epoch(executor, spec, events: list, worker_name: dict):
    epoch = threading.Event()

    def progress(e):
        events.append(e)
        if e.kind == "stage" and e.message.startswith("running on GPU worker"):
            worker_name["name"] = e.message.rsplit(" ", 1)[1]
            worker_name.setdefault("started", []).append(time.monotonic())
        if e.kind == "epoch_start":
            epoch.set()
    future = executor.submit(train, spec, progress=progress, timeout=600)
    assert epoch.wait(180), [e.message for e in events]
    return future, epoch


def test_a_worker_dying_mid_job_is_retried_once_then_the_run_fails(cluster, tmp_path):
    store, wid = workshop(tmp_path, per_label=14)
    slow = RunParams(arch="lite0", epochs=6, size=64, bs=8, suspects="none")
    executor = DaskJobExecutor(cluster.address)

    # one death: the job starts again on a worker and finishes, as the same run
    run_id, spec = prepare_run(store, wid, slow)
    events: list = []
    who: dict = {}
    future, epoch = start_and_wait_for_epoch(executor, spec, events, who)
    [worker_pid] = cluster.worker_pids(who["name"])
    training = descendants(worker_pid)
    assert training
    lost_at = time.monotonic()
    cluster.kill_worker(who["name"])
    assert_gone(training, within=10)  # the training process does not outlive its worker
    result = future.result(600)
    assert result.model_sha256 == sha256_file(Path(spec.out_dir) / "model.pkl")
    retry = next(i for i, e in enumerate(events) if e.kind == "notice" and e.message.startswith("worker lost"))
    assert any(e.kind == "epoch_start" for e in events[retry:])
    assert record_outcome(store, run_id, future)["status"] == "done"
    print(f"\nworker killed -> job started again on a worker {who['started'][-1] - lost_at:.1f}s later "
          f"(and finished {time.monotonic() - lost_at:.1f}s after the kill)")

    # two deaths: a clear failure
    cluster.wait_for_workers(2)
    run_id, spec = prepare_run(store, wid, slow)
    events, who = [], {}
    future, epoch = start_and_wait_for_epoch(executor, spec, events, who)
    cluster.kill_worker(who["name"])
    deadline = time.monotonic() + 180
    while sum(e.kind == "stage" and e.message.startswith("running on GPU worker") for e in events) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cluster.kill_worker(who["name"])  # updated by the retry's "running on" message
    killed = time.monotonic()
    with pytest.raises(TrainingFailed, match="lost 2 times"):
        future.result(300)
    assert time.monotonic() - killed < 30  # at once, not when some later worker picks it up again
    assert sum(e.kind == "notice" for e in events) == 1
    assert record_outcome(store, run_id, future)["status"] == "failed"
    cluster.wait_for_workers(2)
    executor.shutdown()
    store.close()


def test_a_cancelled_job_leaves_no_training_process_on_the_worker(cluster, tmp_path):
    store, wid = workshop(tmp_path, per_label=14)
    executor = DaskJobExecutor(cluster.address)
    run_id, spec = prepare_run(store, wid, RunParams(arch="lite0", epochs=60, size=64, bs=4, suspects="none"))
    events: list = []
    who: dict = {}
    future, _ = start_and_wait_for_epoch(executor, spec, events, who)
    [worker_pid] = cluster.worker_pids(who["name"])
    training = descendants(worker_pid)
    assert training, "the job should be training in a child of the worker"
    future.cancel()
    with pytest.raises(JobCancelled):
        future.result(60)
    assert_gone(training)  # (a fresh spare, warmed for the next job, may be there: it is not this job's)
    assert record_outcome(store, run_id, future)["status"] == "cancelled"
    executor.shutdown()
    store.close()


def test_a_job_past_its_time_limit_is_stopped_on_the_worker(cluster, tmp_path):
    store, wid = workshop(tmp_path, per_label=14)
    executor = DaskJobExecutor(cluster.address)
    run_id, spec = prepare_run(store, wid, RunParams(arch="lite0", epochs=60, size=64, bs=4, suspects="none"))
    who: dict = {}
    events: list = []
    epoch = threading.Event()

    def progress(e):
        events.append(e)
        if e.kind == "stage" and e.message.startswith("running on GPU worker"):
            who["name"] = e.message.rsplit(" ", 1)[1]
        epoch.set() if e.kind == "epoch_start" else None
    future = executor.submit(train, spec, progress=progress, timeout=20)
    assert epoch.wait(180)
    [worker_pid] = cluster.worker_pids(who["name"])
    training = descendants(worker_pid)
    assert training
    with pytest.raises(JobTimedOut):
        future.result(120)
    assert_gone(training)
    assert record_outcome(store, run_id, future)["status"] == "failed"
    executor.shutdown()
    store.close()


def test_an_unreachable_scheduler_is_a_clear_error_and_one_that_comes_back_is_used(tmp_path):
    store, wid = workshop(tmp_path)
    port = free_port()
    executor = DaskJobExecutor(f"tcp://127.0.0.1:{port}", connect_timeout=2)
    run = train_workshop(store, wid, QUICK, executor, timeout=60)
    assert run["status"] == "failed"
    assert f"The GPU cluster at tcp://127.0.0.1:{port} is not reachable" in run["error"]
    with pytest.raises(NotReady):
        executor.workers()
    threads = threading.active_count()
    for _ in range(5):
        assert executor.describe()["error"].startswith("The GPU cluster at")
    assert threading.active_count() == threads  # failed connects leave nothing behind
    with dask_cluster(tmp_path / "back", workers=1, port=port):
        assert executor.describe()["workers"][0]["name"] == "gpu-0"  # no restart needed
        run = train_workshop(store, wid, QUICK, executor, timeout=300)
        assert run["status"] == "done", run["error"]
    executor.shutdown()
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_no_gpu_worker_the_job_says_it_is_waiting(tmp_path):
    with dask_cluster(tmp_path / "cpu-only", workers=1, gpus=0) as cpu_only:
        store, wid = workshop(tmp_path)
        executor = DaskJobExecutor(cpu_only.address, waiting_note_every=0.5)
        run_id, spec = prepare_run(store, wid, QUICK)
        waiting = threading.Event()
        future = executor.submit(train, spec, timeout=120, progress=lambda e: e.kind == "stage" and e.message.startswith(
            "waiting for a GPU worker") and waiting.set())
        assert waiting.wait(60)
        assert executor.describe()["workers"][0]["gpus"] == 0
        future.cancel()
        with pytest.raises(JobCancelled):
            future.result(30)
        executor.shutdown()
        store.close()
