"""Train, results, vote by reactions (several users, added and removed, some while the bot is offline),
apply, undo, retrain with before/after, classify pasted images — a real lite0 run under SimCord."""
from __future__ import annotations

import re
import socket
from dataclasses import replace

import pytest

from imgcls.cleaning import CleaningBoard
from imgcls.store import Store

from ..conftest import inline_images, shown
from .conftest import LABELS, make_bot, photo, seed_images

pytestmark = pytest.mark.simcord(settle_timeout=240)


def mislabel(settings, n: int) -> list[int]:
    """Move every sixth image to the next label, n of them; returns their ids."""
    store = Store(settings.data_dir)
    try:
        [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
        images = store.images(ws["id"])[::6][:n]
        for r in images:
            store.relabel(ws["id"], r["id"], LABELS[(LABELS.index(r["label"]) + 1) % 3], who="seed")
        return [r["id"] for r in images]
    finally:
        store.close()


def bot_messages(world):
    return [m for m in world.channel.history() if m.author.id == world.env.bot.user.id]


async def test_a_workshop_from_training_to_cleaning_to_prediction(world, settings, workers, tmp_path):
    env, ch = world.env, world.channel
    await world.host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Shapes", per_label=8)
    flipped = mislabel(settings, 4)  # what a web search brings: a few images under the wrong label

    # /train answers at once with the queue position; the run's status message follows along
    result = await world.host.slash(ch, "train", epochs=1, size=64)
    assert "run 1" in result.response.content and "starting now" in result.response.content
    posted = bot_messages(world)
    status = next(m for m in posted if m.content.startswith("**Run 1**"))
    assert re.search(r"done, \d+ of \d+ right \(\d+%\)", status.content) and "epoch" in status.content
    assert "Automatic recipe" not in status.content  # options given by hand: no recipe
    results = next(m for m in posted if "Run 1 finished" in shown(m))
    assert f"<@{world.host.id}>" in results.content
    assert "Most confused" in shown(results) and "Accuracy" in shown(results)
    assert "Checked all 24 images: " in shown(results) and "`/clean post`" in shown(results)
    assert sorted(a.filename for a in results.attachments) == ["run1-confusion.png", "run1-learning-curve.png",
                                                                 "run1-top-losses.png"]
    for attachment in results.attachments:
        assert (await attachment.read()).startswith(b"\x89PNG")
    # the pictures are inline in the embeds: confusion matrix, top losses, learning curve
    assert inline_images(results) == ["run1-confusion.png", "run1-top-losses.png", "run1-learning-curve.png"]

    exported = await world.host.slash(ch, "export")
    if exported.response.attachments:
        [model] = exported.response.attachments
        assert model.filename == "run1-model.pkl" and "sha256" in exported.response.content
    else:  # over this server's upload limit: said plainly, privately
        assert exported.ephemeral and "upload limit" in exported.response.content

    runs = await world.alice.slash(ch, "runs")
    assert "run 1:" in runs.response.content and "24 images" in runs.response.content
    again = await world.alice.slash(ch, "results")
    assert len(again.response.attachments) == 3 and "Run 1 finished" in shown(again.response)

    # classify: the slash command, the message command and a mention all answer with the top 3
    pred = await world.alice.slash(ch, "predict", image=("mystery.jpg", photo("squares", 777)))
    assert "model from run 1" in shown(pred.response) and shown(pred.response).count("%") >= 3
    [thumb] = pred.response.attachments  # the pasted image, small, as the answer's thumbnail
    assert inline_images(pred.response) == [thumb.filename]
    pasted = await world.bob.send(ch, "what is this?", attachments=[("a.jpg", photo("circles", 778))])
    menu = await world.carol.context_menu(ch, "Classify image", pasted)
    assert "a.jpg" in shown(menu.response) and "model from run 1" in shown(menu.response)
    mention = await world.bob.send(ch, f"{env.bot.user.mention} and this?",
                                   attachments=[("b.jpg", photo("triangles", 779))])
    reply = next(m for m in bot_messages(world) if m.reference and m.reference.message_id == mention.id)
    assert "b.jpg" in shown(reply) and "run 1" in shown(reply)
    assert [str(r.emoji) for r in reply.reactions] == ["✅", "❌"]
    not_image = await world.alice.slash(ch, "predict", image=("notes.txt", b"hello"))
    assert not_image.ephemeral and "no image" in not_image.response.content

    # /clean post: one message per suspect with the image, why it is suspect, seeded reactions and a legend
    await world.host.slash(ch, "clean post", count=3)
    votes = [m for m in bot_messages(world) if m.content.startswith("**Vote ")]
    assert len(votes) == 3
    first, second, third = sorted(votes, key=lambda m: m.id)
    store = Store(settings.data_dir)
    board = CleaningBoard(store)
    cand_first, cand_second = board.by_message(first.id), board.by_message(second.id)
    assert cand_first["reason"] and cand_first["reason"] in shown(first)
    assert f"Image {cand_first['image_id']}: " in shown(first)
    posted = [board.by_message(m.id)["image_id"] for m in (first, second, third)]
    assert set(posted) & set(flipped), (posted, flipped)  # the mislabelled images are found
    # keep, delete and a number for each other label (its own label would mean keep)
    assert [str(r.emoji) for r in first.reactions] == ["✅", "🗑️", "1️⃣", "2️⃣"]
    assert cand_first["legend"] == [x for x in LABELS if x != cand_first["label"]]
    assert first.attachments[0].filename.startswith("image-")
    assert inline_images(first) == [first.attachments[0].filename]
    assert f"1️⃣ {cand_first['legend'][0]}" in shown(first)

    await world.alice.react(first, "🗑️")
    await world.bob.react(first, "🗑️")
    await world.carol.react(first, "✅")
    await world.carol.unreact(first, "✅")  # withdrawn
    tally = next(m for m in bot_messages(world) if m.id == first.id).content
    assert "Votes (2 people): 🗑️ 2" in tally
    await world.alice.react(second, "1️⃣")
    target = cand_second["legend"][0]

    # the bot goes offline; bob votes on the second, alice changes her mind on the third
    await env.shutdown()
    await world.bob.react(second, "1️⃣")
    await world.alice.react(third, "✅")
    env.bot = make_bot(replace(settings, message_content_intent=True), workers)  # now with the privileged intent
    await env.start()
    await env.bot.recovered.wait()
    plain = await world.carol.send(ch, "look at mine", attachments=[("c.jpg", photo("squares", 780))])
    auto = next(m for m in bot_messages(world) if m.reference and m.reference.message_id == plain.id)
    assert "c.jpg" in shown(auto)
    assert board.votes(cand_second["id"]) == {str(world.alice.id): {f"label:{target}"},
                                              str(world.bob.id): {f"label:{target}"}}

    applied = await world.host.slash(ch, "clean apply")
    text = applied.response.content
    assert "1 deleted, 1 relabelled, 1 kept" in text
    first_row = cand_first
    deleted = store.image(first_row["image_id"])
    assert deleted["status"] == "deleted"
    relabelled = store.image(cand_second["image_id"])
    assert relabelled["label"] == target
    audit = [a for a in store.audit_log(deleted["workshop_id"]) if a["who"] != "seed"]
    assert {a["action"] for a in audit} == {"delete", "relabel"} and all(a["who"] == str(world.host.id) for a in audit)
    closed = [m for m in bot_messages(world) if m.id == first.id][0]
    assert "**Closed:** deleted (2 of 2 votes)" in closed.content

    # /clean undo reverts the whole apply
    undone = await world.host.slash(ch, "clean undo")
    assert "1 images restored" in undone.response.content
    assert store.image(first_row["image_id"])["status"] == "active"
    assert store.image(cand_second["image_id"])["label"] == cand_second["label"]

    # delete one image by hand through the audit log, then /retrain shows before and after
    store.delete_image(deleted["workshop_id"], first_row["image_id"], who="host", why="blurry")
    again = await world.host.slash(ch, "retrain")
    assert "run 2" in again.response.content and "Retraining" in again.response.content
    compare = next(m for m in bot_messages(world) if shown(m).startswith("Before/after cleaning"))
    text = shown(compare)
    assert "run 1" in text and "run 2" in text and "24 → 23 images" in text
    assert f"#{first_row['image_id']} deleted" in text
    [pair] = compare.attachments  # both confusion matrices side by side, in one picture
    assert inline_images(compare) == ["before-after-run2.png"]
    store.close()


async def test_an_interrupted_run_is_announced_after_a_restart(world, settings, workers):
    env = world.env
    await world.host.slash(world.channel, "workshop start", name="Shapes", labels=", ".join(LABELS))
    store = Store(settings.data_dir)
    ws = store.find_workshop(guild_id=world.guild.id, channel_id=world.channel.id)
    run_id = store.create_run(ws["id"], {"arch": "lite0"}, channel_id=world.channel.id)
    store.mark_run(run_id, "running")
    store.db.conn.execute("UPDATE runs SET owner = ? WHERE id = ?", [f"{socket.gethostname()}:999999",
                                                                    run_id])
    await env.restart_bot(make_bot(settings, workers))
    await env.bot.recovered.wait()
    await env.settle()
    assert any(f"Run {run_id} was interrupted" in m.content for m in world.channel.history())
    assert store.run(run_id)["status"] == "interrupted"
    store.close()


@pytest.mark.parametrize("settings", [{"default_arch": "auto"}], indirect=True)
async def test_train_with_no_options_runs_the_automatic_recipe_and_says_what_it_chose(world, settings, tmp_path):
    from imgcls.recipe import CANDIDATES

    ch = world.channel
    await world.host.slash(ch, "workshop start", name="Auto", labels=", ".join(LABELS))
    seed_images(settings, tmp_path, "Auto", per_label=8)
    # the settings fix size and epochs (small, for a quick test); the backbone is left to the recipe
    result = await world.host.slash(ch, "train")
    assert "run 1 (1 epoch, 64 px, the rest automatic, 24 images)" in result.response.content
    arch = CANDIDATES["cpu"][0][0]
    status = next(m for m in bot_messages(world) if m.content.startswith("**Run 1**"))
    [line] = [x for x in status.content.splitlines() if x.startswith("Automatic recipe: ")]
    assert line.startswith(f"Automatic recipe: {arch} at 64 px") and "1 warm-up + 1 epoch:" in line
    assert "18 training images on" in line and "with the size and epochs you set" in line
    results = next(m for m in bot_messages(world) if "Run 1 finished" in shown(m))
    assert re.search(r"Run 1 finished: \d+ of \d+ right \(\d+%\)", shown(results))
    assert f"Automatic: {arch} at 64 px" in shown(results)
    status_reply = await world.alice.slash(ch, "workshop status")
    assert re.search(rf"Model in use: run 1 \({arch}\): \d+ of \d+ right", shown(status_reply.response))
    # a retrain repeats what the recipe chose, so before/after shows the cleaning and nothing else
    await world.host.slash(ch, "retrain")
    # ... and a host may change one thing on purpose: before/after shows it, on the same validation images
    await world.host.slash(ch, "retrain", epochs=2)
    store = Store(settings.data_dir)
    try:
        first, second, third = (store.run(i)["params"] for i in (1, 2, 3))
    finally:
        store.close()
    tfm = CANDIDATES["cpu"][0][3]
    assert (second["arch"], second["size"], second["epochs"], second["item_tfm"], second["auto"]) == \
        (arch, 64, 1, tfm, [])
    assert first["recipe"] and "recipe" not in second
    assert (third["arch"], third["size"], third["epochs"], third["item_tfm"]) == (arch, 64, 2, tfm)
    same = next(m for m in bot_messages(world) if shown(m).startswith("Before/after cleaning: "))
    assert "Recipe" not in shown(same) and re.search(r"\d+ of \d+ right", shown(same))
    changed = next(m for m in bot_messages(world) if shown(m).startswith("Before/after a new recipe: "))
    assert re.search(r"Before/after a new recipe: \d+ → \d+ of \d+ right", shown(changed))
    squish = " squish" if tfm == "squish" else ""
    assert f"{arch}, 64 px{squish}, 1+1 → {arch}, 64 px{squish}, 1+2" in shown(changed)
