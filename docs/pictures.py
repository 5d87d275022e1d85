"""The pictures in the README: the real bot's messages in a simulated Discord, screenshotted.

    PYTHONPATH=<playwright and simcord[preview] extras> PLAYWRIGHT_BROWSERS_PATH=<a Chromium> \\
        .venv/bin/python docs/pictures.py [--out docs/pictures]

A whole guided workshop runs under SimCord (discord.py against an in-memory Discord) with the
real store, training (lite0, generated shapes with a few wrong labels, as a web search brings)
and prediction; SimCord's preview draws each message as the Discord client would and Playwright
saves it as a PNG. The plots are the run's own files. This is for the docs only: the tests
check the same messages without a browser. What to install (nothing of it is a dependency):

    .venv/bin/pip install --target /tmp/pictures/pylib 'av>=14,<17' 'linkify-it-py>=2.0.3' \\
        'regex>=2024.11.6' playwright
    # Playwright's own download (playwright install chromium) works where its CDN is reachable;
    # otherwise Debian's chromium-headless-shell, unpacked with dpkg -x, linked where Playwright
    # looks for it (see docs/README.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import discord
import simcord

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.bot import WorkshopBot  # noqa: E402
from bot.settings import Settings  # noqa: E402
from imgcls.store import Store  # noqa: E402
from tests.bot.conftest import LABELS, photo, seed_images  # noqa: E402
from tests.conftest import shown  # noqa: E402


def flip_some(settings: Settings, every: int = 6) -> dict[int, str]:
    """What a web search brings: every sixth image under the next label. Returns {image id: its true label}."""
    store = Store(settings.data_dir)
    try:
        [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
        truth = {}
        for r in store.images(ws["id"])[::every]:
            store.relabel(ws["id"], r["id"], LABELS[(LABELS.index(r["label"]) + 1) % 3], who="search")
            truth[r["id"]] = r["label"]
        return truth
    finally:
        store.close()


def tricky_triangle(seed: int = 99, size: int = 128) -> bytes:
    """A triangle on the red background the circles come with: a model that learnt colours says "circles"."""
    import numpy as np
    from PIL import Image, ImageDraw

    from tests.conftest import jpeg_bytes

    rng = np.random.default_rng(seed)
    im = Image.fromarray(np.clip(rng.normal(0, 28, (size, size, 3)) + np.array((200, 60, 60)), 0, 255)
                         .astype("uint8"), "RGB")
    ImageDraw.Draw(im).polygon([(size // 2, 14), (14, size - 14), (size - 14, size - 14)], fill=(235, 235, 240))
    return jpeg_bytes(im)


def number_for(labels: list[str], label: str) -> str:
    from bot.render import LABEL_EMOJI

    return LABEL_EMOJI[labels.index(label)]


def last(channel, bot, needle: str):
    return next(m for m in reversed(list(channel.history())) if m.author.id == bot.user.id and needle in shown(m))


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="imgcls-pictures-") as tmp:
        tmp = Path(tmp)
        settings = Settings(discord_token="docs", data_dir=str(tmp / "data"), default_arch="lite0", default_size=128,
                            default_epochs=5, progress_interval=0, reaction_pace=0, clean_count=5,
                            clean_thread_at=10, vote_quorum=2, train_timeout=900)
        bot = WorkshopBot(settings)
        async with simcord.run(bot, settle_timeout=600) as env:
            guild = env.create_guild("Ada's Garden Club")
            admins = guild.create_role("Hosts", permissions=discord.Permissions(manage_guild=True))
            ch = guild.create_text_channel("image-workshop")
            host = guild.add_member(env.create_user("ada"), roles=[admins])
            alice, bob, carol = (guild.add_member(env.create_user(n)) for n in ("grace", "alan", "katherine"))
            shots: dict[str, object] = {}

            started = await host.slash(ch, "workshop start", name="Shapes", labels=", ".join(LABELS))
            shots["start"] = started
            seed_images(settings, tmp, "Shapes", per_label=30, size=128)
            truth = flip_some(settings)
            await alice.slash(ch, "images add", label="circles", image=("my-circle.jpg", photo("circles", 31337)))
            await env.settle()
            await bob.slash(ch, "images show", label="circles")
            await env.settle()
            await host.slash(ch, "train")
            await env.settle()
            shots["results"] = last(ch, env.bot, "Run 1 finished")
            shots["guide-step"] = last(ch, env.bot, "Step 4 of 8")

            pasted = await alice.send(ch, f"{env.bot.user.mention} what is this?",
                                      attachments=[("garden.jpg", photo("squares", 4040))])
            await env.settle()
            shots["answer"] = next(m for m in ch.history() if m.reference and m.reference.message_id == pasted.id)

            await host.slash(ch, "clean post", count=5)
            await env.settle()
            votes = [m for m in ch.history() if m.content.startswith("**Vote ")]
            first = votes[0]
            store = Store(settings.data_dir)
            try:
                for vote in votes:  # the group sees what each picture really is
                    [cand] = store.db.query("SELECT image_id, legend FROM clean_candidates WHERE message_id = ?",
                                            [vote.id])
                    real = truth.get(cand["image_id"])
                    fix = number_for(json.loads(cand["legend"]), real) if real else "✅"
                    for person in (alice, bob):
                        await person.react(vote, fix)
                await carol.react(first, "🗑️")
            finally:
                store.close()
            await env.settle()
            shots["vote"] = next(m for m in ch.history() if m.id == first.id)
            await host.slash(ch, "clean apply")
            await host.slash(ch, "retrain")
            await env.settle()
            shots["before-after"] = last(ch, env.bot, "Before/after cleaning")

            stump = await carol.send(ch, f"{env.bot.user.mention} and this one?",
                                     attachments=[("tricky.jpg", tricky_triangle())])
            await env.settle()
            answer = next(m for m in ch.history() if m.reference and m.reference.message_id == stump.id)
            await bob.react(answer, "❌")
            await env.settle()
            store = Store(settings.data_dir)
            try:
                [row] = store.db.query("SELECT predicted, legend FROM stumpers WHERE message_id = ?", [answer.id])
            finally:
                store.close()
            if row["predicted"] == "triangles":
                print("the model got the tricky triangle right; the stumper picture shows a vote anyway")
            right = number_for(json.loads(row["legend"]), "triangles") if row["predicted"] != "triangles" else "1️⃣"
            for person in (alice, bob):
                await person.react(answer, right)
            await env.settle()
            shots["stumper"] = next(m for m in ch.history() if m.id == answer.id)
            shots["leaderboard"] = await alice.slash(ch, "leaderboard")
            shots["status"] = await alice.slash(ch, "workshop status")

            out.mkdir(parents=True, exist_ok=True)
            async with env.preview(ch, viewers=[alice], layout="message", width=820, height=2400) as preview:
                for name, target in shots.items():
                    target = getattr(target, "response", None) or target
                    cap = await preview.screenshot(str(out / f"{name}.png"), viewer=alice, target=target,
                                                   mode="surface", allow_incomplete=True)
                    print(f"{name}.png {cap.output_width}x{cap.output_height}")
            run2 = Store(settings.data_dir)
            try:
                artefacts = run2.run(2)["artefacts"]
            finally:
                run2.close()
            shutil.copy(artefacts["learning_curve"], out / "learning-curve.png")
            pair = shots["before-after"]
            await pair.attachments[0].save(out / "before-after-confusion.png")
            print("learning-curve.png, before-after-confusion.png")
            await env.bot.session.close()  # SimCord's shutdown leaves the bot's HTTP session to its owner


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "pictures"))
    args = ap.parse_args()
    asyncio.run(main(Path(args.out)))
