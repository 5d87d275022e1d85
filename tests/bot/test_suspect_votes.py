"""/clean post over the whole dataset under SimCord: as many votes as asked for, each saying why, in a thread
of the workshop channel; votes in the thread count across a restart, and apply closes them there."""
from __future__ import annotations

import pytest

from imgcls.store import Store
from imgcls.suspects import SuspectBook
from imgcls.types import ImageScore, TrainResult

from ..conftest import shown
from .conftest import LABELS, make_bot, seed_images

pytestmark = pytest.mark.simcord(settle_timeout=120)


def finished_run_with_suspects(settings, n: int) -> list[int]:
    """A finished run of the workshop whose check found `n` images labelled wrong; returns their ids, best first."""
    store = Store(settings.data_dir)
    try:
        [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
        images = store.images(ws["id"])
        run_id = store.create_run(ws["id"], {"arch": "lite0"})
        store.record_snapshot(run_id, ((r["id"], r["label"]) for r in images))
        store.finish_run(run_id, TrainResult(
            run_id=run_id, arch="lite0", device="cpu", labels=tuple(LABELS), epochs=(), accuracy=0.5, valid_loss=1.0,
            confusion=((1, 0, 0), (0, 1, 0), (0, 0, 1)), most_confused=(), top_losses=(),
            split=tuple((r["id"], k % 5 == 0) for k, r in enumerate(images)), valid_predictions=(), model_path="",
            model_sha256="", artefacts=(), seconds=1.0, n_train=len(images), n_valid=0))
        other = {LABELS[0]: LABELS[1], LABELS[1]: LABELS[2], LABELS[2]: LABELS[0]}
        scores = [ImageScore(r["id"], r["label"], other[r["label"]], 0.9 - k / 100, 0.05 + k / 100, 0.05 + k / 100,
                             True, valid=k % 5 == 0) for k, r in enumerate(images[:n])]
        SuspectBook(store).record(run_id, scores)
        return [r["id"] for r in images[:n]]
    finally:
        store.close()


async def test_twenty_suspects_go_up_in_a_thread_and_are_voted_on_there(world, settings, workers, tmp_path):
    env, ch = world.env, world.channel
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=8)
    ids = finished_run_with_suspects(settings, 20)

    result = await world.host.slash(ch, "clean post", count=20)
    intro = result.response.content
    assert "Voting on 20 suspect images from run 1" in intro and "thread" in intro and "asked for" not in intro
    [thread] = ch.threads
    votes = [m for m in thread.history() if m.content.startswith("**Vote ")]
    assert len(votes) == 20
    assert not [m for m in ch.history() if m.content.startswith("**Vote ")]  # the channel stays readable
    store = Store(settings.data_dir)
    board = SuspectBook(store).board
    order = [board.by_message(m.id)["image_id"] for m in sorted(votes, key=lambda m: m.id)]
    assert order == ids  # best first
    first = sorted(votes, key=lambda m: m.id)[0]
    label = store.image(ids[0])["label"]
    assert f"Image {ids[0]}: labelled *{label}*; the model is 90% sure it is *" in shown(first)
    assert [str(r.emoji) for r in first.reactions] == ["✅", "🗑️", "1️⃣", "2️⃣"]

    # nothing is left to post: said privately, with what to do
    again = await world.host.slash(ch, "clean post", count=5)
    assert again.ephemeral and "no suspect images left" in again.response.content

    await world.alice.react(first, "🗑️")
    assert "Votes (1 people): 🗑️ 1" in next(m for m in thread.history() if m.id == first.id).content
    await env.shutdown()
    await world.bob.react(first, "🗑️")  # while the bot is offline
    env.bot = make_bot(settings, workers)
    await env.start()
    await env.bot.recovered.wait()
    cand = board.by_message(first.id)
    assert set(board.votes(cand["id"])) == {str(world.alice.id), str(world.bob.id)}

    applied = await world.host.slash(ch, "clean apply")
    assert "1 deleted, 0 relabelled, 19 kept" in applied.response.content
    closed = next(m for m in thread.history() if m.id == first.id)
    assert "**Closed:** deleted (2 of 2 votes)" in closed.content
    assert store.image(ids[0])["status"] == "deleted"

    # the 19 that nobody voted on can go up again; asking for more says how many are left
    more = await world.host.slash(ch, "clean post", count=25)
    assert "Voting on 19 suspect images" in more.response.content
    assert "You asked for 25, but only 19 suspect images are left to vote on" in more.response.content
    assert len(ch.threads) == 2
    store.close()


@pytest.mark.parametrize("settings", [{"clean_thread_at": 5}], indirect=True)
async def test_a_handful_of_votes_stay_in_the_channel(world, settings, tmp_path):
    await world.host.slash(world.channel, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=6)
    finished_run_with_suspects(settings, 4)
    result = await world.host.slash(world.channel, "clean post", count=5)
    assert "Voting on 4 suspect images" in result.response.content and "only 4" in result.response.content
    assert world.channel.threads == []
    assert len([m for m in world.channel.history() if m.content.startswith("**Vote ")]) == 4


async def test_without_thread_permissions_the_votes_stay_in_the_channel(world, settings, tmp_path):
    import discord

    ch = world.guild.create_text_channel("no-threads", overwrites={
        world.env.bot.user: discord.PermissionOverwrite(create_public_threads=False)})
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=6)
    finished_run_with_suspects(settings, 8)
    result = await world.host.slash(ch, "clean post", count=8)
    assert "Voting on 8 suspect images" in result.response.content and "thread" not in result.response.content
    assert ch.threads == []
    assert len([m for m in ch.history() if m.content.startswith("**Vote ")]) == 8
