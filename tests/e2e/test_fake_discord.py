"""A throwaway discord.py bot, unpatched, against the fake Discord (tests/fakes/discord_server.py) over real HTTP
and a real gateway websocket: what the bot sends is asserted on the server side."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.discord_server import EPHEMERAL, LOADING, Channel, FakeDiscord, Guild, User


def png(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


CAT, CURVE = png((200, 120, 40)), png((20, 20, 220), (16, 9))
LABELS = ["cat", "caterpillar", "dog", "duck"]
VOTES = ("👍", "👎")


class WorkshopBot(commands.Bot):
    """A small bot using the discord.py features the real one relies on."""

    def __init__(self, guild_id: int) -> None:
        intents = discord.Intents.default()
        intents.message_content = intents.members = True
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.guild_id = guild_id
        self.votes: collections.Counter = collections.Counter()
        self.vote_events: asyncio.Queue = asyncio.Queue()  # one item per user vote counted, for the test to await

    async def setup_hook(self) -> None:
        guild = discord.Object(self.guild_id)
        workshop = app_commands.Group(name="workshop", description="Workshop commands")
        images = app_commands.Group(name="images", description="Image commands", parent=workshop)

        @images.command(name="add", description="Add a labelled image")
        async def add(interaction: discord.Interaction, label: str, image: discord.Attachment) -> None:
            data = await image.read()
            digest = hashlib.sha256(data).hexdigest()[:12]
            await interaction.response.send_message(
                f"{label}: {image.filename} {len(data)} bytes {digest} {image.width}x{image.height}", ephemeral=True)

        @workshop.command(name="status", description="Say who asked")
        async def status(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"ok {interaction.user.name}")

        @app_commands.command(name="train", description="Train, then post the loss curve")
        async def train(interaction: discord.Interaction, epochs: int = 1) -> None:
            await interaction.response.defer(thinking=True)
            progress = await interaction.channel.send("training: epoch 0")
            await progress.edit(content=f"training: epoch {epochs}")
            await progress.delete()
            curve = discord.File(io.BytesIO(CURVE), "curve.png")
            await interaction.followup.send(f"trained {epochs} epoch(s)", file=curve)
            details = await interaction.followup.send("details for you", ephemeral=True, wait=True)
            await details.edit(content="details: loss 0.1")

        @app_commands.command(name="predict", description="Predict a label")
        async def predict(interaction: discord.Interaction, label: str) -> None:
            await interaction.response.send_message(f"predicting {label}", file=discord.File(io.BytesIO(CAT), "in.png"))
            original = await interaction.original_response()
            await interaction.edit_original_response(content=f"{original.content}: {label} (0.93)")
            note = await interaction.followup.send("temporary note", wait=True)
            await note.delete()

        @predict.autocomplete("label")
        async def label_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=label, value=label) for label in LABELS if label.startswith(current)]

        @app_commands.context_menu(name="Flag image")
        async def flag(interaction: discord.Interaction, message: discord.Message) -> None:
            names = ",".join(a.filename for a in message.attachments)
            await interaction.response.send_message(f"flagged {message.id} by {message.author.name}: {names}",
                                                    ephemeral=True)

        class Ballot(discord.ui.View):
            @discord.ui.button(label="Count", custom_id="count")
            async def count(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
                await interaction.response.defer()  # a deferred update: @original is the message clicked on
                await interaction.edit_original_response(content=f"{interaction.message.content} (counted)")

            @discord.ui.button(label="Close", custom_id="close")
            async def close(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
                await interaction.response.edit_message(content="Closed", view=None)
                for emoji in VOTES:
                    await interaction.message.remove_reaction(emoji, interaction.guild.me)

        @app_commands.command(name="vote", description="Post an image to vote on")
        async def vote(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("posting", ephemeral=True)
            message = await interaction.channel.send("Is this a cat?", file=discord.File(io.BytesIO(CAT), "cat.png"),
                                                     view=Ballot())
            for emoji in VOTES:
                await message.add_reaction(emoji)

        @app_commands.command(name="tally", description="Count the votes on a message")
        async def tally(interaction: discord.Interaction, message_id: str) -> None:
            message = await interaction.channel.fetch_message(int(message_id))
            counts = []
            for reaction in message.reactions:
                voters = [user async for user in reaction.users() if not user.bot]
                counts.append(f"{reaction.emoji}={len(voters)}")
            recent = [m async for m in interaction.channel.history(limit=10)]
            await interaction.response.send_message(f"{' '.join(counts)} in {len(recent)} recent")

        self.tree.add_command(workshop, guild=guild)
        for command in (train, predict, flag, vote, tally):
            self.tree.add_command(command)
        await self.tree.sync(guild=guild)
        await self.tree.sync()

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id == self.user.id:
            return
        if str(payload.emoji) not in VOTES:  # not a vote: take it off again
            message = self.get_channel(payload.channel_id).get_partial_message(payload.message_id)
            await message.remove_reaction(payload.emoji, payload.member)
            return
        self.votes[str(payload.emoji)] += 1
        self.vote_events.put_nowait(("add", str(payload.emoji), payload.user_id))

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id != self.user.id and str(payload.emoji) in VOTES:
            self.votes[str(payload.emoji)] -= 1
            self.vote_events.put_nowait(("remove", str(payload.emoji), payload.user_id))

    async def on_message(self, message: discord.Message) -> None:
        if not message.author.bot and self.user in message.mentions:
            await message.add_reaction("👋")
            async with message.channel.typing():
                reply = await message.reply("hi")
            await reply.edit(content=f"hi {message.author.name}")


@dataclass
class World:
    fake: FakeDiscord
    bot: discord.Client
    guild: Guild
    chan: Channel
    alice: User
    bob: User


@asynccontextmanager
async def running_bot(token: str | None = None, make=WorkshopBot) -> AsyncIterator[World]:
    fake = FakeDiscord()
    guild = fake.add_guild("Workshop")
    chan = fake.add_channel(guild, "general")
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    fake.add_member(guild, alice)
    fake.add_member(guild, bob, roles=[fake.add_role(guild, "mods", 1 << 13)])
    async with fake:
        with fake.discord_urls():
            bot = make(guild.id)
            task = asyncio.create_task(bot.start(token or fake.token))
            try:
                ready = asyncio.ensure_future(fake.wait_ready())
                await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    ready.cancel()
                    task.result()  # raises what stopped the bot
                    raise RuntimeError("the bot stopped before it was ready")
                await ready
                await asyncio.wait_for(bot.wait_until_ready(), 10)
                yield World(fake, bot, guild, chan, alice, bob)
            finally:
                await bot.close()
                await asyncio.wait_for(task, 10)


def run(scenario) -> None:
    async def main() -> None:
        async with running_bot() as world:
            await scenario(world)
            assert world.fake.unknown_requests == []

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_bot_logs_in_syncs_and_identifies() -> None:
    async def scenario(w: World) -> None:
        fake = w.fake
        calls = [(r.method, r.path) for r in fake.requests]
        app = fake.app_id
        assert calls[:4] == [("GET", "/users/@me"), ("GET", "/oauth2/applications/@me"),
                             ("PUT", f"/applications/{app}/guilds/{w.guild.id}/commands"),
                             ("PUT", f"/applications/{app}/commands")]
        assert all(r.status == 200 for r in fake.requests)
        assert fake.connections[0].query == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
        identify = next(f["d"] for f in fake.gateway_received if f["op"] == 2)
        assert identify["token"] == fake.token and identify["intents"] == w.bot.intents.value
        assert [e["t"] for e in fake.gateway_events[:2]] == ["READY", "GUILD_CREATE"]

        (workshop,) = fake.commands[w.guild.id]
        assert workshop["name"] == "workshop" and workshop["guild_id"] == str(w.guild.id)
        assert [(o["name"], o["type"]) for o in workshop["options"]] == [("images", 2), ("status", 1)]
        assert {(c["name"], c["type"]) for c in fake.commands[None]} == {
            ("train", 1), ("predict", 1), ("vote", 1), ("tally", 1), ("Flag image", 3)}

        guild = w.bot.get_guild(w.guild.id)
        assert guild.get_channel(w.chan.id).name == "general"
        assert guild.owner_id == fake.owner.id and guild.me.guild_permissions.manage_messages
        assert guild.get_member(w.bob.id).guild_permissions.manage_messages
        assert not guild.get_member(w.alice.id).guild_permissions.manage_messages
        assert w.bot.application_id == app and w.bot.user.id == fake.bot_user.id
        assert discord.http.HTTPClient.request.__module__ == "discord.http"  # the real client, not a patched one

        assert (await w.bot.fetch_channel(w.chan.id)).name == "general"
        member = await guild.fetch_member(w.alice.id)
        assert member.name == "alice" and not member.bot
        assert [r.path for r in fake.requests[-2:]] == [f"/channels/{w.chan.id}",
                                                        f"/guilds/{w.guild.id}/members/{w.alice.id}"]

    run(scenario)


def test_subcommand_with_an_attachment_answers_ephemerally() -> None:
    async def scenario(w: World) -> None:
        fake = w.fake
        ix = await fake.slash(w.alice, w.chan, "workshop images add", {"label": "cat"},
                              attachments=[("cat.png", CAT, "image/png")])
        callback = await ix.wait_response()
        digest = hashlib.sha256(CAT).hexdigest()[:12]
        assert callback["type"] == 4
        assert callback["data"]["content"] == f"cat: cat.png {len(CAT)} bytes {digest} 8x6"
        assert callback["data"]["flags"] == EPHEMERAL and ix.original.ephemeral
        request = await fake.wait_for_request(lambda r: r.path.endswith("/callback"))
        assert request.path == f"/interactions/{ix.id}/{ix.token}/callback" and request.query == {"with_response": "1"}
        assert any(r.path.startswith(f"/attachments/{w.chan.id}/") for r in fake.requests)  # image.read() hit the CDN
        assert not [e for e in fake.gateway_events if e["t"] == "MESSAGE_CREATE"]  # ephemeral: not broadcast

        ix = await fake.slash(w.bob, w.chan, "workshop status")
        message = await ix.wait_message()
        assert message.content == "ok bob" and not message.ephemeral and message.type == 20
        await fake.wait_for(lambda: any(e["t"] == "MESSAGE_CREATE" for e in fake.gateway_events))

        with pytest.raises(LookupError, match="not synced"):
            await fake.slash(w.alice, w.chan, "nope")
        with pytest.raises(ValueError, match="missing required option 'image'"):
            await fake.slash(w.alice, w.chan, "workshop images add", {"label": "cat"})
        with pytest.raises(ValueError, match="is a group"):
            await fake.slash(w.alice, w.chan, "workshop images")

    run(scenario)


def test_deferred_command_follows_up_with_a_file() -> None:
    async def scenario(w: World) -> None:
        fake = w.fake
        ix = await fake.slash(w.bob, w.chan, "train", {"epochs": 3})
        assert (await ix.wait_response())["type"] == 5
        curve = await ix.wait_message(lambda m: m.attachments)
        assert curve is ix.original and not curve.loading and not curve.ephemeral  # the first followup fills the defer
        assert curve.content == "trained 3 epoch(s)" and curve.files == {"curve.png": CURVE}
        assert curve.attachments[0].content_type == "image/png"
        details = await ix.wait_message(lambda m: m.ephemeral and m.content == "details: loss 0.1")
        assert ix.followups == [details] and details.edited_timestamp
        assert any(r.method == "PATCH" and r.path == f"/webhooks/{fake.app_id}/{ix.token}/messages/{details.id}"
                   for r in fake.requests)
        progress = [r for r in fake.requests if r.path.startswith(f"/channels/{w.chan.id}/messages")]
        assert [(r.method, (r.json or {}).get("content")) for r in progress] == [
            ("POST", "training: epoch 0"), ("PATCH", "training: epoch 3"), ("DELETE", None)]
        assert fake.messages(w.chan) == [curve, details]  # the deleted progress message is gone

        posts = [r for r in fake.requests if r.method == "POST" and r.path == f"/webhooks/{fake.app_id}/{ix.token}"]
        assert [r.query["wait"] for r in posts] == ["1", "1"]
        assert [f.filename for f in posts[0].files] == ["curve.png"] and posts[0].files[0].data == CURVE
        assert posts[0].json["attachments"] == [{"id": 0, "filename": "curve.png"}]
        assert posts[1].json["flags"] == EPHEMERAL and not posts[1].files
        async with aiohttp.ClientSession() as http, http.get(curve.attachments[0].url) as response:
            assert await response.read() == CURVE  # the stored file is served back
        events = [e["t"] for e in fake.gateway_events if e["d"].get("id") == str(curve.id)]
        assert events == ["MESSAGE_CREATE", "MESSAGE_UPDATE"]  # the "thinking" message, then its fill-in
        update = next(e["d"] for e in fake.gateway_events
                      if e["t"] == "MESSAGE_UPDATE" and e["d"]["id"] == str(curve.id))
        assert update["flags"] & LOADING == 0 and update["attachments"][0]["filename"] == "curve.png"

    run(scenario)


def test_autocomplete_and_message_context_menu() -> None:
    async def scenario(w: World) -> None:
        fake = w.fake
        choices = await fake.autocomplete(w.alice, w.chan, "predict", {"label": "ca"}, focused="label")
        assert choices == [{"name": "cat", "value": "cat"}, {"name": "caterpillar", "value": "caterpillar"}]
        assert fake.interactions[-1].payload["type"] == 4
        assert len(await fake.autocomplete(w.alice, w.chan, "predict", focused="label")) == len(LABELS)

        ix = await fake.slash(w.alice, w.chan, "predict", {"label": "cat"})
        final = await ix.wait_message(lambda m: m.content.endswith("(0.93)"))
        assert final is ix.original and final.content == "predicting cat: cat (0.93)" and final.files == {"in.png": CAT}
        assert [f.filename for f in ix.callback_files] == ["in.png"]  # a multipart callback
        assert ix.callback["data"]["attachments"] == [{"id": 0, "filename": "in.png"}]
        await fake.wait_for(lambda: ix.followups and ix.followups[0].deleted)
        assert ix.messages == [final]
        hook = f"/webhooks/{fake.app_id}/{ix.token}/messages"
        assert [(r.method, r.path) for r in fake.requests if r.path.startswith(hook)] == [
            ("GET", f"{hook}/@original"), ("PATCH", f"{hook}/@original"), ("DELETE", f"{hook}/{ix.followups[0].id}")]

        post = await fake.post_message(w.alice, w.chan, "look at this", attachments=[("a.png", CAT, "image/png")])
        ix = await fake.context_menu(w.bob, w.chan, "Flag image", post)
        reply = await ix.wait_message()
        assert reply.content == f"flagged {post.id} by alice: a.png" and reply.ephemeral and reply.type == 23

    run(scenario)


def test_vote_message_with_reactions_counts_votes() -> None:
    async def scenario(w: World) -> None:
        fake, bot_id = w.fake, w.fake.bot_user.id
        await (await fake.slash(w.alice, w.chan, "vote")).wait_response()
        post = await fake.wait_for_message(lambda m: m.reactions.get("👎") == [bot_id], channel=w.chan)
        assert post.author is fake.bot_user and post.content == "Is this a cat?" and post.files == {"cat.png": CAT}
        assert (post.attachments[0].width, post.attachments[0].height) == (8, 6)
        puts = [r.path for r in fake.requests if r.method == "PUT" and "/reactions/" in r.path]
        assert puts == [f"/channels/{w.chan.id}/messages/{post.id}/reactions/{e}/@me" for e in ("👍", "👎")]

        await fake.react(w.alice, post, "👍")
        await fake.react(w.bob, post, "👍")
        await fake.react(w.bob, post, "👎")
        await fake.unreact(w.bob, post, "👍")
        seen = [await asyncio.wait_for(w.bot.vote_events.get(), 5) for _ in range(4)]
        assert seen[-1] == ("remove", "👍", w.bob.id)
        assert w.bot.votes == {"👍": 1, "👎": 1}
        assert post.reactions == {"👍": [bot_id, w.alice.id], "👎": [bot_id, w.bob.id]}

        ix = await fake.slash(w.bob, w.chan, "tally", {"message_id": str(post.id)})
        assert (await ix.wait_message()).content == "👍=1 👎=1 in 1 recent"
        assert any(r.path == f"/channels/{w.chan.id}/messages" and r.query == {"limit": "10"} for r in fake.requests)
        assert any(r.path == f"/channels/{w.chan.id}/messages/{post.id}" for r in fake.requests)
        # users() asks for reaction.count users, so count must match the stored reactions
        assert [r.query for r in fake.requests if r.path.endswith(("/👍", "/👎"))] == [{"limit": "2"}] * 2

        async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as http:  # paging
            url = f"{fake.base_url}/channels/{w.chan.id}/messages/{post.id}/reactions/%F0%9F%91%8D"
            async with http.get(url, params={"limit": 1}) as response:
                assert response.headers["Content-Type"] == "application/json"
                first = await response.json()
            async with http.get(url, params={"limit": 5, "after": first[0]["id"]}) as response:
                rest = await response.json()
        assert [u["id"] for u in first + rest] == sorted([str(bot_id), str(w.alice.id)], key=int)

        await fake.react(w.alice, post, "🐈")  # not a vote: the bot takes it off
        await fake.wait_for(lambda: post.reactions["🐈"] == [])
        assert fake.requests[-1].path == f"/channels/{w.chan.id}/messages/{post.id}/reactions/🐈/{w.alice.id}"

        ix = await fake.click(w.bob, post, "count")
        assert (await ix.wait_response())["type"] == 6
        edit = await fake.wait_for_request(lambda r: r.method == "PATCH" and r.path.endswith("/messages/@original"))
        assert edit.path == f"/webhooks/{fake.app_id}/{ix.token}/messages/@original"
        assert post.content == "Is this a cat? (counted)" and post.edited_timestamp
        ix = await fake.click(w.alice, post, "close")
        assert (await ix.wait_response())["type"] == 7
        assert post.content == "Closed" and post.components == [] and post.files == {"cat.png": CAT}
        await fake.wait_for(lambda: post.reactions == {"👍": [w.alice.id], "👎": [w.bob.id], "🐈": []})
        assert w.bot.votes == {"👍": 1, "👎": 1}
        with pytest.raises(LookupError):
            await fake.click(w.alice, post, "count")

    run(scenario)


def test_mentions_get_a_reaction_and_a_reply_also_across_a_resume() -> None:
    async def scenario(w: World) -> None:
        fake = w.fake
        plain = await fake.post_message(w.bob, w.chan, "no mention here")
        hello = await fake.post_message(w.alice, w.chan, f"hey {fake.bot_user.mention} what's up")
        reply = await fake.wait_for_message(lambda m: m.reference and m.reference["message_id"] == str(hello.id)
                                            and m.content == "hi alice")
        assert reply.type == 19 and reply.author is fake.bot_user and reply.edited_timestamp
        assert any(r.path == f"/channels/{w.chan.id}/typing" for r in fake.requests)
        await fake.wait_for(lambda: hello.reactions.get("👋") == [fake.bot_user.id])
        assert plain.reactions == {}

        resumed = fake.reconnect()  # op 7 goes out now; this message is dispatched while the bot reconnects
        again = await fake.post_message(w.bob, w.chan, f"{fake.bot_user.mention} still there?")
        await resumed
        def replies() -> list:
            return [m for m in fake.messages(w.chan) if m.reference and m.reference["message_id"] == str(again.id)]

        await fake.wait_for(replies)
        await (await fake.slash(w.alice, w.chan, "workshop status")).wait_message()  # a later round trip
        assert len(replies()) == 1  # replayed once, not lost nor duplicated
        assert [f["op"] for f in fake.gateway_received].count(2) == 1  # resumed, not re-identified
        resume = next(f["d"] for f in fake.gateway_received if f["op"] == 6)
        assert resume["session_id"] == fake.gateway_events[0]["d"]["session_id"] and len(fake.connections) == 2

    run(scenario)


def test_unknown_routes_and_bad_tokens_are_visible() -> None:
    async def scenario(w: World) -> None:
        with pytest.raises(discord.NotFound):
            await w.bot.fetch_guild_preview(w.guild.id)
        (unknown,) = w.fake.unknown_requests
        assert (unknown.method, unknown.path, unknown.status) == ("GET", f"/guilds/{w.guild.id}/preview", 404)
        w.fake.requests.remove(unknown)

    run(scenario)

    async def bad_token() -> None:
        with pytest.raises(discord.LoginFailure):
            async with running_bot(token="not-the-token"):
                pass

    asyncio.run(asyncio.wait_for(bad_token(), 30))


def test_without_the_message_content_intent_only_mentions_carry_content() -> None:
    class Listener(discord.Client):
        def __init__(self, guild_id: int) -> None:
            super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05)
            self.seen: asyncio.Queue = asyncio.Queue()

        async def on_message(self, message: discord.Message) -> None:
            self.seen.put_nowait((message.content, [a.filename for a in message.attachments]))

    async def main() -> None:
        async with running_bot(make=Listener) as w:
            assert w.fake.identify["intents"] & (1 << 15) == 0
            await w.fake.post_message(w.alice, w.chan, "secret", attachments=[("a.png", CAT)])
            await w.fake.post_message(w.bob, w.chan, f"{w.fake.bot_user.mention} hello", attachments=[("b.png", CAT)])
            assert await asyncio.wait_for(w.bot.seen.get(), 5) == ("", [])
            assert await asyncio.wait_for(w.bot.seen.get(), 5) == (f"{w.fake.bot_user.mention} hello", ["b.png"])

    asyncio.run(asyncio.wait_for(main(), 30))
