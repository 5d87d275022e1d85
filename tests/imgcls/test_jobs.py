"""The job executor: one spawned process per job, progress back, crash, cancel and time limit."""
from __future__ import annotations

import os
import threading
import time

import pytest

from imgcls.errors import InvalidInput, JobCancelled, JobTimedOut, TrainingFailed
from imgcls.jobs import ProcessJobExecutor


# Job functions are top-level: the spawned child imports them by name.
def count_to(n, progress):
    for i in range(n):
        progress(i)
    return {"pid": os.getpid(), "n": n}


def crash_hard(code, progress):
    progress("about to crash")
    os._exit(code)


def refuse(message, progress):
    raise InvalidInput(message)


def blow_up(_, progress):
    raise ZeroDivisionError("division by zero")


def sleep_then_touch(path, progress):
    progress("sleeping")
    time.sleep(30)
    open(path, "w").close()


def test_a_job_runs_in_another_process_and_streams_progress():
    seen = []
    result = ProcessJobExecutor().submit(count_to, 5, progress=seen.append).result(timeout=60)
    assert result["pid"] != os.getpid() and result["n"] == 5
    assert seen == [0, 1, 2, 3, 4]


def test_a_crashing_process_fails_the_job_not_the_caller():
    future = ProcessJobExecutor().submit(crash_hard, 7)
    with pytest.raises(TrainingFailed, match="exit code 7"):
        future.result(timeout=60)


def test_library_errors_come_back_with_their_message():
    with pytest.raises(InvalidInput, match="not a label"):
        ProcessJobExecutor().submit(refuse, "'x' is not a label").result(timeout=60)


def test_unexpected_errors_come_back_as_training_failed():
    with pytest.raises(TrainingFailed, match="ZeroDivisionError"):
        ProcessJobExecutor().submit(blow_up, None).result(timeout=60)


def test_a_running_job_can_be_cancelled(tmp_path):
    started = threading.Event()
    marker = tmp_path / "finished"
    future = ProcessJobExecutor().submit(sleep_then_touch, str(marker), progress=lambda _: started.set())
    assert started.wait(60)
    assert future.cancel()
    with pytest.raises(JobCancelled):
        future.result(timeout=30)
    assert not marker.exists()


def test_a_job_past_its_time_limit_is_stopped(tmp_path):
    marker = tmp_path / "finished"
    began = time.monotonic()
    future = ProcessJobExecutor().submit(sleep_then_touch, str(marker), timeout=5)
    with pytest.raises(JobTimedOut, match="time limit"):
        future.result(timeout=60)
    assert time.monotonic() - began < 25 and not marker.exists()


def test_jobs_beyond_the_slots_wait_their_turn_and_can_be_cancelled_while_queued(tmp_path):
    executor = ProcessJobExecutor(max_workers=1)
    first = executor.submit(sleep_then_touch, str(tmp_path / "a"), timeout=6)
    queued = executor.submit(count_to, 1)
    assert queued.cancel() and queued.cancelled()
    with pytest.raises(JobTimedOut):
        first.result(timeout=60)
    executor.shutdown()


def test_shutdown_can_cancel_everything_and_refuses_new_jobs(tmp_path):
    executor = ProcessJobExecutor(max_workers=1)
    running = executor.submit(sleep_then_touch, str(tmp_path / "a"))
    waiting = executor.submit(count_to, 3)
    executor.shutdown(wait=True, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(JobCancelled):
        running.result(timeout=1)
    with pytest.raises(RuntimeError):
        executor.submit(count_to, 1)


WARMED = {"by": None}


def mark_warm():
    WARMED["by"] = os.getpid()


def who_warmed(_, progress):
    return WARMED["by"], os.getpid()


def test_a_warm_spare_process_runs_each_job_and_is_replaced_after_it():
    executor = ProcessJobExecutor(warm=mark_warm)
    try:
        first = executor.submit(who_warmed, None).result(timeout=60)
        second = executor.submit(who_warmed, None).result(timeout=60)
    finally:
        executor.shutdown()
    assert first[0] == first[1] and second[0] == second[1]  # warmed in the process that ran the job
    assert first[1] != second[1]  # still one job per process
    assert executor._spare is None


def test_with_keep_warm_the_spare_starts_when_asked_and_stops_when_idle():
    executor = ProcessJobExecutor(1, warm=_warm_marker, keep_warm=2.0)
    try:
        assert not executor.describe()["warm"]  # nothing at construction: an idle host stays light
        executor.warm_soon()
        assert executor.describe()["warm"]
        assert executor.submit(_double, 21).result(60) == 42
        assert executor.describe()["warm"]  # refilled after the job
        running = executor.submit(_sleepy, 3.0)  # takes the spare
        deadline = time.monotonic() + 30
        while not running.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        executor.warm_soon()  # another run queued while the only slot trains: no torch import beside it
        assert not executor.describe()["warm"]
        running.result(60)
        assert executor.describe()["warm"]
        deadline = time.monotonic() + 15
        while executor.describe()["warm"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not executor.describe()["warm"]  # stopped after keep_warm seconds without a run
    finally:
        executor.shutdown()
    never = ProcessJobExecutor(1, warm=_warm_marker, keep_warm=0)
    never.warm_soon()
    assert never.submit(_double, 2).result(60) == 4
    assert not never.describe()["warm"]
    never.shutdown()


def _warm_marker() -> None:
    pass


def _double(x, progress):
    return 2 * x


def _sleepy(seconds, progress):
    time.sleep(seconds)
    return seconds
