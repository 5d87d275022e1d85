"""`make demo`: a whole guided workshop on this machine, with no Discord token and no account.

    .venv/bin/python -m tests.e2e.demo [--out demo] [--per-label 8] [--size 64] [--epochs 1]

The real bot and the real discord.py talk to the project's local Discord-compatible server
(tests/fakes/discord_server.py); images come from the real Openverse when it answers, else from
a local search API and an image server with generated pictures. The scenario is the wire-level
end-to-end test's (tests/e2e/scenario.py), so the demo shows what the tests check. The channel
transcript goes to demo/transcript.md and every posted picture to demo/files/.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from bot.bot import WorkshopBot
from bot.settings import Settings
from tests.conftest import embed_dicts
from tests.e2e.scenario import LONG, People, guided_workshop
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.threaded import running_servers

log = logging.getLogger(__name__)
OPENVERSE = ("api.openverse.org", 443)


def reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def command_name(data: dict) -> str:
    """"workshop start" from an interaction's data (subcommands are nested options)."""
    parts, options = [data.get("name", "?")], data.get("options") or []
    while options and options[0].get("type") in (1, 2):
        parts.append(options[0]["name"])
        options = options[0].get("options") or []
    return " ".join(parts)


def readable(text: str, names: dict[int, str]) -> str:
    """Mentions as the names Discord would show."""
    return re.sub(r"<@!?(\d+)>", lambda m: "@" + names.get(int(m[1]), "someone"), str(text))


def write_transcript(fake: FakeDiscord, channel, out: Path) -> int:
    """The channel and its threads as Markdown, pictures saved beside it; returns the bot's message count."""
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    names = {u.id: u.name for u in fake.users.values()} | {fake.bot_user.id: fake.bot_user.name}
    lines = [f"# Demo workshop in #{channel.name}", ""]
    posted = 0
    for place in (channel, *fake.threads(channel)):
        if place is not channel:
            lines += ["", f"## Thread: {place.name}", ""]
        for m in fake.messages(place):
            if m.ephemeral:
                continue
            who = names.get(m.author.id) or getattr(m.author, "name", "?")
            posted += m.author.id == fake.bot_user.id
            head = f"**{who}**"
            if m.interaction is not None:
                head += f" (answering `/{command_name(m.interaction.payload.get('data') or {})}` by " \
                        f"{m.interaction.user.name})"
            lines.append(f"{head}:")
            if m.content:
                lines += [f"> {line}" for line in readable(m.content, names).splitlines()]
            by_url = {a.url: a for a in m.attachments}
            for e in embed_dicts(m):
                for part in ((e.get("author") or {}).get("name"), e.get("title") and f"**{e['title']}**",
                             e.get("description")):
                    if part:
                        lines += [f">> {line}" for line in readable(part, names).splitlines()]
                for f in e.get("fields") or []:
                    lines.append(f">> *{f['name']}*:")
                    lines += [f">> {line}" for line in readable(f["value"], names).splitlines()]
                if (e.get("footer") or {}).get("text"):
                    lines.append(f">> -# {e['footer']['text']}")
                for key in ("image", "thumbnail"):
                    a = by_url.get((e.get(key) or {}).get("url"))
                    if a is not None:
                        lines.append(f">> ![{a.filename}](files/{m.id}-{a.filename})")
            for a in m.attachments:
                (files / f"{m.id}-{a.filename}").write_bytes(a.data)
                if not any(a.url == (e.get(k) or {}).get("url") for e in embed_dicts(m) for k in ("image", "thumbnail")):
                    lines.append(f"> 📎 [{a.filename}](files/{m.id}-{a.filename})")
            if m.reactions:
                lines.append("> " + "  ".join(f"{emoji} {len(users)}" for emoji, users in m.reactions.items() if users))
            lines.append("")
    (out / "transcript.md").write_text("\n".join(lines), encoding="utf-8")
    return posted


async def run(out: Path, per_label: int, size: int, epochs: int, web: bool) -> dict:
    fake = FakeDiscord()
    guild = fake.add_guild("Demo School")
    chan = fake.add_channel(guild, "workshop")
    people = People.join(fake, guild)
    with tempfile.TemporaryDirectory(prefix="imgcls-demo-") as data, contextlib.ExitStack() as stack:
        if web:
            search = {"download_sources": "openverse"}
        else:
            servers = stack.enter_context(running_servers(shapes=True))
            search = {"openverse_url": servers.search, "download_sources": "openverse", "download_allow": "127.0.0.1"}
        settings = Settings(discord_token=fake.token, data_dir=data, default_arch="lite0", default_size=size,
                            default_epochs=epochs, progress_interval=1.0, reaction_pace=0.05, clean_count=3,
                            clean_thread_at=2, vote_quorum=2, train_timeout=LONG, **search)
        bot = WorkshopBot(settings)
        try:
            async with fake.running(bot):
                await asyncio.wait_for(bot.recovered.wait(), 60)
                metrics = await guided_workshop(fake, bot, chan, people, per_label=per_label, size=size,
                                                epochs=epochs, exact_download=not web)
        finally:  # what the channel shows, also when the scenario stopped half way
            if out.exists():
                shutil.rmtree(out)  # an earlier demo's (main() checked)
            out.mkdir(parents=True)
            metrics_posted = write_transcript(fake, chan, out)
    metrics["messages"]["bot_total"] = metrics_posted
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo", help="where the transcript and pictures go (replaced)")
    ap.add_argument("--per-label", type=int, default=12)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--offline", action="store_true", help="use the generated pictures even if Openverse answers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    web = not args.offline and reachable(OPENVERSE)
    print(f"Images from {'the real Openverse' if web else 'a local image server with generated pictures'}; "
          "Discord is the project's local server. A whole guided workshop takes a minute or two…", flush=True)
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "transcript.md").is_file():
        print(f"{out} exists and is not an earlier demo's folder; choose another with --out.", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        metrics = asyncio.run(run(out, args.per_label, args.size, args.epochs, web))
    except (AssertionError, asyncio.TimeoutError) as exc:
        print(f"The demo stopped: {exc}", file=sys.stderr)
        return 1
    print(f"Done in {time.monotonic() - t0:.0f} s. The bot posted {metrics['messages']['bot_total']} messages.")
    print(f"Transcript: {out / 'transcript.md'}\nPictures:   {out / 'files'}/")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
