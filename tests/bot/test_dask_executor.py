"""EXECUTOR=dask from the bot's side, under SimCord: a scheduler that cannot be reached fails new runs with a clear
message while everything else (predictions, status) keeps working; the bot host imports no torch for training."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from imgcls.dask_jobs import DaskJobExecutor
from imgcls.types import Progress

from ..conftest import shown
from .conftest import LABELS, make_bot, photo, seed_images

pytestmark = pytest.mark.simcord(settle_timeout=240)
ROOT = Path(__file__).resolve().parents[2]


async def test_an_unreachable_cluster_fails_runs_clearly_and_the_bot_keeps_answering(world, settings, workers,
                                                                                    tmp_path):
    env, ch = world.env, world.channel
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=8)
    await world.host.slash(ch, "train", epochs=1, size=64)  # trained here, before the switch
    await env.shutdown()
    dask_settings = replace(settings, executor="dask", dask_scheduler="tcp://127.0.0.1:9")
    env.bot = make_bot(dask_settings, {**workers, "trainer": DaskJobExecutor("tcp://127.0.0.1:9", connect_timeout=2)})
    await env.start()
    await env.bot.recovered.wait()

    await world.host.slash(ch, "train", epochs=1, size=64)
    failed = [m for m in ch.history() if "run 2 failed" in m.content]
    assert failed and "The GPU cluster at tcp://127.0.0.1:9 is not reachable" in failed[0].content
    pred = await world.alice.slash(ch, "predict", image=("mystery.jpg", photo("squares", 777)))
    assert "model from run 1" in shown(pred.response)
    status = await world.alice.slash(ch, "workshop status")
    assert "GPU cluster at" in status.response.content and "not reachable" in status.response.content


def test_with_the_dask_executor_the_bot_host_imports_no_torch_and_starts_no_trainer():
    code = ("import sys, multiprocessing\n"
            "from bot.bot import make_trainer\n"
            "from bot.settings import Settings\n"
            "t = make_trainer(Settings(executor='dask', dask_scheduler='tcp://127.0.0.1:9'))\n"
            "print(type(t).__name__, sorted(m for m in ('torch', 'fastai', 'timm') if m in sys.modules),"
            " len(multiprocessing.active_children()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["DaskJobExecutor", "[]", "0"]


class ClusterLike:
    """The real local executor dressed as a two-GPU cluster whose worker is lost once at the first epoch: what
    the bot does with any executor's notices and slots, whatever the executor."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def submit(self, fn, arg, *, progress=None, timeout=None):
        told = []

        def relay(event):
            if event.kind == "epoch_start" and not told:
                told.append(True)
                progress(Progress("notice", message="worker lost, retrying on another GPU"))
            progress(event)
        return self.inner.submit(fn, arg, progress=relay, timeout=timeout)

    def describe(self):
        return {"kind": "dask", "address": "tcp://gpu-box:8786", "slots": 2,
                "workers": [{"name": "gpu-a", "address": "tcp://10.0.0.2:1", "gpus": 1, "busy": False},
                            {"name": "gpu-b", "address": "tcp://10.0.0.3:1", "gpus": 1, "busy": True}]}

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.inner.shutdown(wait, cancel_futures=cancel_futures)


async def test_a_lost_worker_is_told_in_the_channel_and_slots_follow_the_cluster(world, settings, workers, tmp_path):
    env, ch = world.env, world.channel
    await env.shutdown()
    env.bot = make_bot(settings, {**workers, "trainer": ClusterLike(workers["trainer"])})
    await env.start()
    await env.bot.recovered.wait()
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=8)
    await world.host.slash(ch, "train", epochs=1, size=64)
    said = [m.content for m in ch.history()]
    assert "Run 1: worker lost, retrying on another GPU." in said, said
    assert any("run 1" in m.lower() and re.search(r"\d+ of \d+ right", m) for m in said), said
    assert env.bot.queue.slots == 2
    status = await world.alice.slash(ch, "workshop status")
    assert "gpu\\-a (1 GPU, idle), gpu\\-b (1 GPU, busy)" in status.response.content  # names escaped as text
