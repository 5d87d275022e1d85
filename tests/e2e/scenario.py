"""A whole guided workshop, scripted: the wire-level end-to-end test runs it, and so does `make demo`.

    people = People.join(fake, guild)
    bot = WorkshopBot(settings)
    async with fake.running(bot):
        await bot.recovered.wait()
        metrics = await guided_workshop(fake, bot, chan, people, per_label=8, size=64, epochs=1)

The host starts a workshop with the guide on and follows it: download, look, train, read the
results (embeds with the pictures inline), try a pasted image, vote on suspects in a thread,
apply, retrain (before and after side by side), stump the model until a quorum adds the pasted
image to the dataset, and look at the leaderboard. Every step asserts what a participant would
see, so the demo cannot drift from what the test checks.
"""
from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

from imgcls.store import Store
from tests.conftest import embed_dicts, jpeg_bytes, make_image, shown

MANAGE_GUILD = 1 << 5
LONG = 600.0


@dataclass
class People:
    host: Any
    alice: Any
    bob: Any
    carol: Any

    @classmethod
    def join(cls, fake, guild) -> "People":
        host, alice, bob, carol = (fake.add_user(n) for n in ("host", "alice", "bob", "carol"))
        fake.add_member(guild, host, permissions=MANAGE_GUILD)
        for user in (alice, bob, carol):
            fake.add_member(guild, user)
        return cls(host, alice, bob, carol)


def by_bot(fake, channel, needle):
    """A waiter: the bot's first message in `channel` whose visible text contains `needle`."""
    return lambda: next((m for m in fake.messages(channel) if m.author.id == fake.bot_user.id and needle in shown(m)),
                        None)


def pictures(message) -> dict[str, bytes]:
    """{file name: bytes} of the files a message's embeds show inline (Discord rewrote attachment://name to the
    file's URL); an embed picture that is not one of the message's files fails."""
    by_url = {a.url: a for a in message.attachments}
    out = {}
    for e in embed_dicts(message):
        for key in ("image", "thumbnail"):
            url = (e.get(key) or {}).get("url")
            if url:
                assert url in by_url, f"{key} {url} is not one of the message's files"
                out[by_url[url].filename] = by_url[url].data
    return out


async def timed_ack(fake, *args, **kwargs):
    t = time.perf_counter()
    ix = await fake.slash(*args, **kwargs)
    await ix.wait_response(LONG)
    return ix, time.perf_counter() - t


def guide_titles(fake, chan) -> list[str]:
    return [e.get("title", "") for m in fake.messages(chan) if m.author.id == fake.bot_user.id
            for e in embed_dicts(m) if re.match(r"Step \d+ of \d+|Workshop complete", e.get("title", ""))]


async def answer_to(fake, chan, pasted) -> Any:
    """The bot's answer to a pasted message, once its ✅ and ❌ are on it."""
    return await fake.wait_for(lambda: next((m for m in fake.messages(chan) if m.reference and m.reference[
        "message_id"] == str(pasted.id) and {"✅", "❌"} <= set(m.reactions)), None), LONG)


async def guided_workshop(fake, bot, chan, people: People, *, per_label: int, size: int, epochs: int,
                          lag: Any = None, exact_download: bool = True) -> dict:
    """Run the scenario; returns its figures (acknowledgement times, latencies, messages posted).
    exact_download=False: the real web may leave a label short of `per_label` (the demo against Openverse)."""
    host, alice, bob, carol = people.host, people.alice, people.bob, people.carol
    metrics: dict = {}
    acks = []

    # 1. start with three labels and the guide on: the plan and the first step come with the reply
    ix, ack = await timed_ack(fake, host, chan, "workshop start", {"name": "Shapes", "labels": "circles, squares, triangles"})
    acks.append(ack)
    started = ix.original
    assert "started" in started.content and [e["title"] for e in embed_dicts(started)] == [
        "The plan", "Step 1 of 8: Gather images"], embed_dicts(started)

    # 2. download from the search API and image server; the guide then says to look at the images
    ix, ack = await timed_ack(fake, host, chan, "images download", {"per_label": per_label})
    acks.append(ack)
    done = await fake.wait_for(by_bot(fake, chan, "**Download finished**"), LONG)
    assert done.content.count(f"{per_label}/{per_label}") == 3 or not exact_download, done.content
    await fake.wait_for(by_bot(fake, chan, "Step 2 of 8: Look at them"), 30)
    ix, ack = await timed_ack(fake, alice, chan, "images show", {"label": "circles"})
    acks.append(ack)
    await fake.wait_for(lambda: ix.original and ix.original.files.get("preview.png"), 30)
    await fake.wait_for(by_bot(fake, chan, "Step 3 of 8: Train the model"), 30)

    # 3. train, sampling the event loop's lag while it runs
    if lag is not None:
        lag.start()
        await asyncio.sleep(3)
        metrics["lag_idle"] = await lag.stop()
        lag.start()
    t_train = time.perf_counter()
    ix, ack = await timed_ack(fake, host, chan, "train", {"epochs": epochs, "size": size})
    acks.append(ack)
    assert "run 1" in ix.callback["data"]["content"]
    results = await fake.wait_for(by_bot(fake, chan, "Run 1 finished"), LONG)
    if lag is not None:
        metrics["lag_training"] = await lag.stop()
    metrics["train"] = {"images": 3 * per_label, "size": size, "epochs": f"1 frozen + {epochs}",
                        "wall_s": time.perf_counter() - t_train}

    # 4. results as embeds: fields, and the confusion matrix, top losses and learning curve inline
    inline = pictures(results)
    assert list(inline) == ["run1-confusion.png", "run1-top-losses.png", "run1-learning-curve.png"], list(inline)
    assert all(data.startswith(b"\x89PNG") for data in inline.values())
    assert f"<@{host.id}>" in results.content
    fields = {f["name"] for f in embed_dicts(results)[0]["fields"]}
    assert {"Accuracy", "Images", "Epochs", "Most confused"} <= fields, fields
    status = by_bot(fake, chan, "**Run 1** —")()
    assert status is not None and status.edited_timestamp and "epoch" in status.content
    await fake.wait_for(by_bot(fake, chan, "Step 4 of 8: See what the model learnt"), 30)

    # 5. try it: a pasted image (a mention needs no privileged intent) gets an embed answer with ✅ and ❌
    pasted = await fake.post_message(alice, chan, f"{fake.bot_user.mention} what is this?",
                                     attachments=[("first.jpg", jpeg_bytes(make_image("squares", 8999)))])
    answer = await answer_to(fake, chan, pasted)
    assert "model from run 1" in shown(answer) and list(pictures(answer)) == [answer.attachments[0].filename]
    await fake.wait_for(by_bot(fake, chan, "Step 5 of 8: Try it on new images"), 30)
    await fake.react(bob, answer, "✅")  # judging an answer is the step
    await fake.wait_for(by_bot(fake, chan, "Step 6 of 8: Clean the data"), 30)

    # 6. the three images most likely wrong go up for a vote, in a thread; three users vote there
    ix, ack = await timed_ack(fake, host, chan, "clean post", {"count": 3})
    acks.append(ack)
    intro = ix.callback["data"]["content"]
    assert "Voting on 3 suspect images from run 1" in intro and "thread" in intro, intro
    [thread] = await fake.wait_for(lambda: fake.threads(chan) or None, 30)
    assert thread.id == ix.original.id and thread.name == "Votes on run 1"
    votes = await fake.wait_for(lambda: (lambda v: v if len(v) == 3 and all(
        len(m.reactions) == 4 for m in v) else None)(
        [m for m in fake.messages(thread) if m.content.startswith("**Vote ")]), LONG)
    assert not [m for m in fake.messages(chan) if m.content.startswith("**Vote ")]
    first, second, third = sorted(votes, key=lambda m: m.id)
    assert all(re.match(r"Image \d+: (labelled \*\w+\*[;,] |unlike |almost )", embed_dicts(m)[0]["description"])
               for m in votes), [shown(m) for m in votes]
    assert all(list(pictures(m)) == [m.attachments[0].filename] for m in votes)
    assert all(fake.bot_user.id in users for users in first.reactions.values())
    await fake.react(alice, first, "🗑️")
    await fake.react(bob, first, "🗑️")
    await fake.react(carol, first, "✅")
    await fake.react(alice, second, "1️⃣")
    await fake.react(bob, second, "1️⃣")
    await fake.react(carol, second, "1️⃣")
    await fake.unreact(carol, second, "1️⃣")  # withdrawn: still 2 of 2
    await fake.react(carol, third, "✅")
    await fake.wait_for(lambda: "Votes (2 people): 1️⃣ 2" in fake.message(second.id).content, 30)
    await fake.wait_for(lambda: "Votes (3 people): ✅ 1 🗑️ 2" in fake.message(first.id).content, 30)
    assert list(pictures(fake.message(first.id))) == [first.attachments[0].filename]  # a vote keeps the image

    # 7. apply; the guide moves on to retraining
    ix, ack = await timed_ack(fake, host, chan, "clean apply")
    acks.append(ack)
    applied = ix.callback["data"]["content"]
    assert "1 deleted, 1 relabelled, 1 kept" in applied, applied
    await fake.wait_for(lambda: "**Closed:** deleted" in fake.message(first.id).content, 30)
    await fake.wait_for(by_bot(fake, chan, "Step 7 of 8: Retrain and compare"), 30)

    # 8. retrain, with before/after: both confusion matrices side by side in one picture
    ix, ack = await timed_ack(fake, host, chan, "retrain")
    acks.append(ack)
    compare = await fake.wait_for(by_bot(fake, chan, "Before/after cleaning"), LONG)
    assert list(pictures(compare)) == ["before-after-run2.png"]
    n = sum(int(x) for x in re.findall(r"(\d+)/\d+", done.content))  # what the download stored
    assert f"{n} → {n - 1} images" in shown(compare) and " deleted" in shown(compare), shown(compare)
    await fake.wait_for(by_bot(fake, chan, "Step 8 of 8: Stump the model"), 30)

    # 9. pasted images are classified; the second and later are warm
    latencies = []
    for seed in (1, 2, 3, 4):
        t = time.perf_counter()
        pasted = await fake.post_message(alice, chan, f"{fake.bot_user.mention} what is this?",
                                         attachments=[("mystery.jpg", jpeg_bytes(make_image("circles", 9000 + seed)))])
        answer = await fake.wait_for(lambda: next((m for m in fake.messages(chan) if m.reference and
                                                   m.reference["message_id"] == str(pasted.id)), None), LONG)
        latencies.append(time.perf_counter() - t)
        assert "mystery.jpg" in shown(answer) and "run 2" in shown(answer) and "%" in shown(answer)

    # 10. stump the model: bob says the last answer is wrong, two people agree on a label, it joins the dataset
    answer = await answer_to(fake, chan, pasted)
    await fake.react(bob, answer, "❌")
    await fake.wait_for(lambda: "Which label is it?" in fake.message(answer.id).content
                        and "1️⃣" in fake.message(answer.id).reactions, 30)
    legend = re.search(r"1️⃣ (\w+)", fake.message(answer.id).content).group(1)
    await fake.react(bob, answer, "1️⃣")
    await fake.react(carol, answer, "1️⃣")
    stumped = await fake.wait_for(lambda: "Stumper!" in fake.message(answer.id).content
                                  and fake.message(answer.id), 60)
    image_id = int(re.search(r"as image (\d+)", stumped.content).group(1))
    store = Store(bot.settings.data_dir)
    try:
        row = store.image(image_id)
        assert (row["label"], row["status"], row["source"], row["added_by"], row["stumper"]) == (
            legend, "active", "upload", str(alice.id), 1), row
    finally:
        store.close()
    await fake.wait_for(by_bot(fake, chan, "Workshop complete"), 30)

    # 11. the leaderboard: alice found the stumper
    ix, ack = await timed_ack(fake, alice, chan, "leaderboard")
    acks.append(ack)
    board = shown(await fake.wait_for(lambda: not ix.original.loading and ix.original, 30))
    # alice: the stumper is her image (1 + 3 points) and two of her votes agreed; bob's three votes all agreed;
    # carol kept the deleted image, her third vote had no quorum, her stumper vote agreed
    assert [line for line in board.splitlines() if " pts · " in line] == [
        "**1.** **alice** · **6** pts · 1 image · 2 votes (2 agreed) · 1 stumper",
        "**2.** **bob** · **3** pts · 0 images · 3 votes (3 agreed) · 0 stumpers",
        "**3.** **carol** · **1** pts · 0 images · 3 votes (1 agreed) · 0 stumpers"], board
    ix, ack = await timed_ack(fake, alice, chan, "workshop status")
    acks.append(ack)
    assert "Model in use: run 2" in ix.original.content
    assert "✅ 8. Stump the model" in shown(ix.original), shown(ix.original)

    assert guide_titles(fake, chan) == [f"Step {n} of 8" + t for n, t in (
        (1, ": Gather images"), (2, ": Look at them"), (3, ": Train the model"), (4, ": See what the model learnt"),
        (5, ": Try it on new images"), (6, ": Clean the data"), (7, ": Retrain and compare"),
        (8, ": Stump the model"))] + ["Workshop complete 🎉"], \
        guide_titles(fake, chan)
    posted = [m for c in (chan, *fake.threads(chan)) for m in fake.messages(c) if m.author.id == fake.bot_user.id]
    metrics["messages"] = {"bot_total": len(posted), "in_vote_thread": sum(m.channel is not chan for m in posted),
                           "guide": len(guide_titles(fake, chan)),
                           "answers_to_pastes": sum(1 for m in posted if m.reference),
                           "embeds": sum(len(m.embeds) for m in posted)}
    metrics["ack_s"] = {"max": max(acks), "median": statistics.median(acks), "n": len(acks)}
    metrics["paste_to_answer_s"] = {"first": latencies[0], "warm_median": statistics.median(latencies[1:])}
    return metrics
