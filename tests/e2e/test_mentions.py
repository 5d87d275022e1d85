"""No mass pings, over the wire: labels and a search creator that say "@everyone", "<@&1>" and "<@1>" go
through start, download, credits, training, results, votes and a prediction; every message the bot sends
forbids @everyone and role pings in its allowed_mentions, and none of that text, its embeds' included,
can still mention anyone."""
from __future__ import annotations

import asyncio
import re

from bot.bot import WorkshopBot
from bot.settings import Settings
from tests.conftest import jpeg_bytes, make_image, shown
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.search_api import SearchState
from tests.fakes.threaded import running_servers

MANAGE_GUILD = 1 << 5
HOSTILE = "@everyone <@&1> <@1> @here"
LABELS = ["@everyone", "<@&1>", "<@1>"]
# a mention Discord would act on: @everyone/@here, or <@id>, <@!id>, <@&id> with nothing in between
LIVE = re.compile(r"@(everyone|here)|<@[!&]?\d+>")


def embed_text(e: dict) -> str:
    """Every text of an embed a person reads."""
    parts = [e.get("title"), e.get("description"), (e.get("footer") or {}).get("text"), (e.get("author") or {}).get("name")]
    parts += [x for f in e.get("fields") or [] for x in (f.get("name"), f.get("value"))]
    return "\n".join(p for p in parts if p)


def sent_bodies(fake) -> list[tuple[str, dict]]:
    """(path, message body) of everything the bot created or edited: channel messages, interaction
    responses, follow-ups and webhook edits."""
    out = []
    for r in fake.requests:
        if r.method not in ("POST", "PATCH") or not isinstance(r.json, dict):
            continue
        if r.path.endswith("/callback"):
            if r.json.get("type") in (4, 7) and r.json.get("data"):
                out.append((r.path, r.json["data"]))
        elif "/messages" in r.path or r.path.startswith("/webhooks/"):
            out.append((r.path, r.json))
    return out


async def test_labels_and_creators_that_say_everyone_never_ping(tmp_path):
    state = SearchState(creator=f"Ann {HOSTILE}")
    with running_servers(state) as search:
        fake = FakeDiscord()
        guild = fake.add_guild("School")
        chan = fake.add_channel(guild, "workshop")
        host, alice = fake.add_user("host"), fake.add_user("alice")
        fake.add_member(guild, host, permissions=MANAGE_GUILD)
        fake.add_member(guild, alice)
        settings = Settings(discord_token=fake.token, data_dir=str(tmp_path / "data"), default_arch="lite0",
                            default_size=64, default_epochs=1, progress_interval=0.2, reaction_pace=0,
                            openverse_url=search.search, download_sources="openverse", download_allow="127.0.0.1",
                            clean_count=2, vote_quorum=2, train_timeout=600)
        bot = WorkshopBot(settings)
        async with fake.running(bot):
            await asyncio.wait_for(bot.recovered.wait(), 60)
            ix = await fake.slash(host, chan, "workshop start", {"name": f"Pings {HOSTILE}",
                                                                 "labels": ", ".join(LABELS)})
            await ix.wait_response(60)
            await fake.slash(host, chan, "images download", {"per_label": 6})
            await fake.wait_for(lambda: any("**Download finished**" in m.content
                                            for m in fake.messages(chan)), 300)
            ix = await fake.slash(alice, chan, "credits")
            await ix.wait_response(60)
            assert b"Ann @everyone" in b"".join(f.data for f in ix.callback_files)  # a file, as is
            ix = await fake.slash(host, chan, "train", {"epochs": 1, "size": 64})
            await ix.wait_response(60)
            await fake.wait_for(lambda: any("Run 1 finished" in shown(m) for m in fake.messages(chan)), 600)
            ix = await fake.slash(host, chan, "clean post", {"count": 2})
            await ix.wait_response(60)
            await fake.wait_for(lambda: len([m for m in fake.messages(chan)
                                             if m.content.startswith("**Vote ")]) == 2, 120)
            pasted = await fake.post_message(alice, chan, f"{fake.bot_user.mention} what is this?",
                                             attachments=[("x.jpg", jpeg_bytes(make_image("circles", 5)))])
            await fake.wait_for(lambda: any(m.reference and m.reference["message_id"] == str(pasted.id)
                                            for m in fake.messages(chan)), 120)
            ix = await fake.slash(alice, chan, "workshop status")
            await ix.wait_response(60)
            ix = await fake.slash(alice, chan, "results")
            await ix.wait_message(lambda m: "Run 1" in shown(m), 60)

    bodies = sent_bodies(fake)
    assert len(bodies) > 10
    for path, body in bodies:
        allowed = body.get("allowed_mentions")
        assert allowed is not None, (path, body)
        assert "everyone" not in allowed.get("parse", []) and "roles" not in allowed.get("parse", []), (path, allowed)
        assert not allowed.get("roles"), (path, allowed)
        assert {str(u) for u in allowed.get("users") or []} <= {str(host.id)}, (path, allowed)  # only a requester
        if "parse" in allowed:
            assert "users" not in allowed["parse"], (path, allowed)
        content = "\n".join([body.get("content") or ""] + [embed_text(e) for e in body.get("embeds") or []])
        own = content.replace(f"<@{host.id}>", "").replace(f"<@{alice.id}>", "").replace(f"<@{fake.bot_user.id}>", "")
        assert not LIVE.search(own), (path, content)
    texts = "\n".join("\n".join([body.get("content") or ""] + [embed_text(e) for e in body.get("embeds") or []])
                      for _, body in bodies)
    assert "everyone" in texts  # the labels and the creator are shown, just not as mentions
    assert any(body.get("embeds") for _, body in bodies)  # results, votes and the answer are embeds
