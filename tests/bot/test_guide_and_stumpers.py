"""The guided workshop, stumpers and the leaderboard under SimCord: guidance on and off, the plan's
progress across a restart, a wrong answer voted into the dataset (votes cast while the bot was
offline count), undone by the host, and a leaderboard that shows each server only its own people."""
from __future__ import annotations

import pytest

from imgcls.store import Store

from ..conftest import embed_dicts, shown
from .conftest import LABELS, make_bot, photo, seed_images

pytestmark = pytest.mark.simcord(settle_timeout=240)


def bot_messages(world, channel=None):
    return [m for m in (channel or world.channel).history() if m.author.id == world.env.bot.user.id]


def steps_posted(world) -> list[str]:
    return [e["title"] for m in bot_messages(world) for e in embed_dicts(m) if e.get("title", "").startswith("Step ")]


async def test_the_guide_posts_each_next_step_once_and_status_shows_the_plan(world, settings, workers):
    ch = world.channel
    started = await world.host.slash(ch, "workshop start", name="Flowers", labels="sunflowers, lavender, roses")
    assert [e["title"] for e in embed_dicts(started.response)] == ["The plan", "Step 1 of 8: Gather images"]
    assert "`/images download per_label:30`" in shown(started.response)

    added = await world.alice.slash(ch, "images add", label="roses", image=("r.jpg", photo("circles", 1)))
    assert "added as image" in added.response.content
    await world.env.settle()
    assert steps_posted(world) == ["Step 1 of 8: Gather images", "Step 2 of 8: Look at them"]
    step = next(m for m in bot_messages(world) if "Step 2 of 8" in shown(m))
    assert "✅ Done: Gather images" in shown(step) and "`/images show label:…`" in shown(step)

    await world.bob.slash(ch, "images show", label="roses")
    await world.env.settle()
    assert steps_posted(world) == ["Step 1 of 8: Gather images", "Step 2 of 8: Look at them",
                                   "Step 3 of 8: Train the model"]
    status = await world.carol.slash(ch, "workshop status")
    plan = next(e for e in embed_dicts(status.response) if e["title"] == "The plan")["description"]
    assert plan.splitlines()[:4] == ["✅ 1. Gather images", "✅ 2. Look at them", "➡️ 3. Train the model · `/train`",
                                     "▫️ 4. See what the model learnt"]

    # a restart neither repeats a step nor loses one: the state is in the database
    await world.env.restart_bot(make_bot(settings, workers))
    await world.env.bot.recovered.wait()
    await world.bob.slash(ch, "images show", label="roses")
    await world.env.settle()
    assert steps_posted(world) == ["Step 1 of 8: Gather images", "Step 2 of 8: Look at them",
                                   "Step 3 of 8: Train the model"]


async def test_with_the_guide_off_nothing_is_posted_until_a_host_turns_it_on(world):
    ch = world.channel
    started = await world.host.slash(ch, "workshop start", name="Quiet", labels="a, b", guide=False)
    assert not embed_dicts(started.response) and "The guide is off" in started.response.content
    await world.alice.slash(ch, "images add", label="a", image=("a.jpg", photo("circles", 2)))
    await world.env.settle()
    assert steps_posted(world) == []
    status = await world.alice.slash(ch, "workshop status")
    plan = next(e for e in embed_dicts(status.response) if e["title"] == "The plan")
    assert "guide is off" in plan["footer"]["text"] and "✅ 1. Gather images" in plan["description"]  # still tracked

    refused = await world.alice.slash(ch, "workshop guide", on=True)
    assert refused.ephemeral and "Only the workshop host" in refused.response.content
    on = await world.host.slash(ch, "workshop guide", on=True)
    assert "The guide is on" in on.response.content
    assert [e["title"] for e in embed_dicts(on.response)] == ["Step 2 of 8: Look at them"]
    await world.alice.slash(ch, "images show", label="a")
    await world.env.settle()
    assert steps_posted(world)[-1] == "Step 3 of 8: Train the model"
    off = await world.host.slash(ch, "workshop guide", on=False)
    assert "The guide is off" in off.response.content


async def test_a_wrong_answer_joins_the_dataset_as_a_stumper_after_a_quorum_and_the_host_can_undo_it(
        world, settings, workers, tmp_path):
    env, ch = world.env, world.channel
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=8)
    await world.host.slash(ch, "train", epochs=1, size=64)
    assert any("Run 1 finished" in shown(m) for m in bot_messages(world))

    pasted = await world.alice.send(ch, f"{env.bot.user.mention} what is this?",
                                    attachments=[("mine.jpg", photo("circles", 4242))])
    answer = next(m for m in bot_messages(world) if m.reference and m.reference.message_id == pasted.id)
    assert [str(r.emoji) for r in answer.reactions] == ["✅", "❌"]
    predicted = embed_dicts(answer)[0]["title"]
    store = Store(settings.data_dir)
    [row] = store.db.query("SELECT * FROM stumpers WHERE message_id = ?", [answer.id])
    legend = [x for x in LABELS if x != row["predicted"]]
    assert row["predicted"] in predicted and row["user_id"] == str(world.alice.id)

    # numbers count only once someone says wrong; then the legend goes up with a reaction per label
    await world.bob.react(answer, "1️⃣")
    await world.bob.react(answer, "❌")
    answer = next(m for m in bot_messages(world) if m.id == answer.id)
    assert "Which label is it?" in answer.content and f"1️⃣ {legend[0]}" in answer.content
    assert [str(r.emoji) for r in answer.reactions] == ["✅", "❌", "1️⃣", "2️⃣"]
    await world.bob.unreact(answer, "1️⃣")
    await world.bob.react(answer, "1️⃣")
    answer = next(m for m in bot_messages(world) if m.id == answer.id)
    assert "Votes (1 people): 1️⃣ 1" in answer.content and "Stumper" not in answer.content

    # carol agrees while the bot is offline: after the restart the recount adds the image
    await env.shutdown()
    await world.carol.react(answer, "1️⃣")
    env.bot = make_bot(settings, workers)
    await env.start()
    await env.bot.recovered.wait()
    await env.settle()
    answer = next(m for m in bot_messages(world) if m.id == answer.id)
    assert "Stumper!" in answer.content, answer.content
    [row] = store.db.query("SELECT * FROM stumpers WHERE message_id = ?", [answer.id])
    image = store.image(row["image_id"])
    assert (image["label"], image["source"], image["added_by"], image["stumper"], image["status"]) == (
        legend[0], "upload", str(world.alice.id), 1, "active")

    # the leaderboard: alice found it, bob and carol agreed; another server sees none of them
    board = await world.bob.slash(ch, "leaderboard")
    text = shown(board.response)
    assert "**alice** · **4** pts · 1 image · 0 votes (0 agreed) · 1 stumper" in text, text
    assert "**bob** · **1** pts · 0 images · 1 vote (1 agreed)" in text
    other = env.create_guild("Elsewhere")
    stranger = other.add_member(env.create_user("stranger"))
    there = await stranger.slash(other.create_text_channel("general"), "leaderboard")
    assert "Nobody has scored yet" in shown(there.response) and "alice" not in shown(there.response)

    # the guide followed along; a stumper found before cleaning and retraining does not end the workshop
    assert steps_posted(world) == ["Step 1 of 8: Gather images", "Step 4 of 8: See what the model learnt",
                                   "Step 5 of 8: Try it on new images", "Step 6 of 8: Clean the data"]
    assert not any("Workshop complete" in shown(m) for m in bot_messages(world))

    undone = await world.host.slash(ch, "clean undo")
    assert "1 stumper set aside again" in undone.response.content
    assert store.image(row["image_id"])["status"] == "deleted"
    board = await world.bob.slash(ch, "leaderboard")
    assert "1 stumper" not in shown(board.response)
    store.close()


async def test_a_channel_where_the_bot_cannot_embed_is_refused_with_what_to_fix(world):
    import discord

    no_embeds = world.guild.create_text_channel(
        "no-embeds", overwrites={world.env.bot.user: discord.PermissionOverwrite(embed_links=False)})
    refused = await world.host.slash(no_embeds, "workshop start", name="Plain", labels="a, b")
    assert refused.ephemeral and "Embed Links permission" in refused.response.content
