"""Hardening under SimCord: a tampered model is not shared, an interrupted run's status message says so after a
restart, /workshop status names who started each run."""
from __future__ import annotations

import hashlib
import socket

from imgcls.store import Store
from imgcls.types import TrainResult

from .conftest import LABELS, make_bot


def workshop_id(settings) -> int:
    store = Store(settings.data_dir)
    try:
        [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
        return ws["id"]
    finally:
        store.close()


def finished_run(settings, model: bytes, requested_by: str) -> int:
    """A finished run whose model file holds `model` (and whose sha256 was recorded from it)."""
    store = Store(settings.data_dir)
    try:
        wid = workshop_id(settings)
        run_id = store.create_run(wid, {"arch": "lite0"}, requested_by=requested_by)
        path = store.run_dir(run_id) / "model.pkl"
        path.write_bytes(model)
        store.finish_run(run_id, TrainResult(
            run_id=run_id, arch="lite0", device="cpu", labels=tuple(LABELS), epochs=(), accuracy=0.9, valid_loss=0.3,
            confusion=((1, 0, 0), (0, 1, 0), (0, 0, 1)), most_confused=(), top_losses=(), split=(),
            valid_predictions=(), model_path=str(path), model_sha256=hashlib.sha256(model).hexdigest(), artefacts=(),
            seconds=1.0, n_train=0, n_valid=3))
        return run_id
    finally:
        store.close()


async def test_a_model_changed_after_training_is_not_shared(world, settings, tmp_path):
    await world.host.slash(world.channel, "workshop start", name="Shapes", labels=", ".join(LABELS))
    run_id = finished_run(settings, b"model bytes as trained", str(world.host.id))
    ok = await world.host.slash(world.channel, "export")
    assert [a.filename for a in ok.response.attachments] == [f"run{run_id}-model.pkl"]
    store = Store(settings.data_dir)
    (store.run_dir(run_id) / "model.pkl").write_bytes(b"model bytes swapped later")
    store.close()
    refused = await world.host.slash(world.channel, "export")
    assert refused.ephemeral and "has changed since it was trained" in refused.response.content
    assert not refused.response.attachments


async def test_workshop_status_names_who_started_each_run(world, settings):
    await world.host.slash(world.channel, "workshop start", name="Shapes", labels=", ".join(LABELS))
    finished_run(settings, b"m1", str(world.alice.id))
    finished_run(settings, b"m2", str(world.bob.id))
    status = await world.carol.slash(world.channel, "workshop status")
    text = status.response.content
    assert f"by <@{world.alice.id}>" in text and f"by <@{world.bob.id}>" in text and "someone" not in text


async def test_an_interrupted_runs_status_message_says_so_after_a_restart(world, settings, workers):
    env = world.env
    await world.host.slash(world.channel, "workshop start", name="Shapes", labels=", ".join(LABELS))
    status = await env.bot.get_channel(world.channel.id).send("**Run 1** — training\nepoch 2/4  ETA 1m20s")
    store = Store(settings.data_dir)
    run_id = store.create_run(workshop_id(settings), {"arch": "lite0"}, channel_id=world.channel.id)
    store.mark_run(run_id, "running")
    store.set_run_message(run_id, status.id)
    store.db.conn.execute("UPDATE runs SET owner = ? WHERE id = ?", [f"{socket.gethostname()}:999999", run_id])
    await env.restart_bot(make_bot(settings, workers))
    await env.bot.recovered.wait()
    await env.settle()
    edited = next(m for m in world.channel.history() if m.id == status.id)
    assert "interrupted" in edited.content and "ETA" not in edited.content
    store.close()
