"""Classifying pasted images: /predict, the "Classify image" message command, mentioning the bot,
and (only with the message-content intent switched on) every image posted in a workshop channel.
Then the group can teach the model with the images it gets wrong.

Prediction runs in one persistent worker process that keeps the model cached. Each answer is
one message per image, an embed with the pasted image as its thumbnail, and the bot seeds ✅
(right) and ❌ (wrong). On ❌ the message shows the labels' number legend, as votes do; once a
quorum agrees on a label the image goes through ingest into the dataset as the paster's upload,
marked as a stumper (imgcls.stumpers), and `/clean undo` takes it out again. Votes live in the
store; after a restart the bot recounts every open answer's reactions.
"""
from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.cleaning import KEEP, RELABEL, tally
from imgcls.collect import IMAGE_SUFFIXES
from imgcls.errors import ConflictError, ImgclsError, InvalidInput, NotFound
from imgcls.ingest import ingest, thumbnail_jpeg
from imgcls.predict import predict_in_worker
from imgcls.types import REJECT_REASONS, IngestLimits

from .. import embeds, render
from ..checks import workshop_here
from . import as_embeds, reaction_picks

log = logging.getLogger(__name__)

MAX_IMAGES = 4
ANSWER_HOURS = 24  # an answer takes right/wrong votes this long, or until a newer model answers instead


def image_attachments(attachments: Sequence[discord.Attachment]) -> list[discord.Attachment]:
    return [a for a in attachments if (a.content_type or "").startswith("image/")
            or Path(a.filename).suffix.lower() in IMAGE_SUFFIXES][:MAX_IMAGES]


@dataclass
class Answer:
    """One pasted image's answer: the prediction, or why there is none."""
    attachment: discord.Attachment
    data: bytes = b""
    prediction: Any = None
    error: str = ""


class Classify(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Classify image", callback=self.classify_message,
                                             allowed_contexts=app_commands.AppCommandContext(guild=True))
        self.open: dict[int, int] = {}  # answer message id -> stumper id (answers still taking votes)
        self._locks: dict[int, asyncio.Lock] = {}

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        await self.bot.db(self.bot.stumpers.expire, ANSWER_HOURS)
        await self.reload()

    async def closed(self, rows: list[dict], why: str) -> None:
        """Answers that stopped taking votes: the ones showing the legend say so, and why."""
        await self.reload()
        for row in rows:
            if row["status"] != "asking":
                continue  # nobody said wrong: its text shows no question to withdraw
            message = await self._message(row["channel_id"], row["message_id"])
            try:
                if message is not None:
                    await message.edit(content=f"**Closed:** {why}")
            except discord.HTTPException as exc:
                log.warning("could not mark answer %s closed: %s", row["id"], exc)

    async def reload(self) -> None:
        """The answers still taking votes (after a restart, or after a new model closed the older ones)."""
        self.open = {row["message_id"]: row["id"] for row in await self.bot.db(self.bot.stumpers.open_answers)}

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    # ---------------------------------------------------------- the shared path

    async def predict(self, ws: dict, attachments: Sequence[discord.Attachment]) -> list[Answer]:
        """Each image's answer: the top 3 with probabilities (the verdict says "not sure" under the threshold)."""
        run = await self.bot.db(self.bot.store.latest_run, ws["id"])
        limit = IngestLimits().max_bytes
        out = []
        for att in attachments:
            if att.size > limit:
                out.append(Answer(att, error=f"{att.size / 1e6:.1f} MB is over the {limit / 1e6:.0f} MB limit."))
                continue
            data = await att.read()
            try:
                [pred] = await asyncio.get_running_loop().run_in_executor(
                    self.bot.predict_pool, predict_in_worker, run["model_path"], run["model_sha256"], [data], 3,
                    run["id"], run.get("onnx_path"), run.get("onnx_sha256"))
            except InvalidInput as exc:
                out.append(Answer(att, error=render.plain(exc)))
                continue
            out.append(Answer(att, data, pred))
        return out

    async def post_answers(self, ws: dict, answers: Sequence[Answer], user_id: int, channel: Any,
                           send: Callable[..., Awaitable[Any]]) -> None:
        """One message per image through `send` (a reply or an interaction followup), with ✅ and ❌ seeded."""
        errors = [f"`{render.code(a.attachment.filename)}`: {a.error}" for a in answers if a.error]
        if errors:
            await send(render.clip("\n".join(errors)))
        for a in answers:
            if a.prediction is not None:
                await self._post_one(ws, a, user_id, channel, send)

    async def _post_one(self, ws: dict, a: Answer, user_id: int, channel: Any, send) -> None:
        pred, stumpers = a.prediction, self.bot.stumpers
        labels = await self.bot.db(self.bot.store.labels, ws["id"])
        legend = [label for label in labels if label != pred.label][: render.MAX_RELABEL_CHOICES]
        sid = await self.bot.db(stumpers.add, ws["id"], a.data, user_id=str(user_id), filename=a.attachment.filename,
                                predicted=pred.label, probability=pred.probability, run_id=pred.run_id, legend=legend,
                                channel_id=channel.id, guild_id=ws["guild_id"])
        name, files = f"pasted-{sid}.jpg", []
        try:
            files = [discord.File(io.BytesIO(await self.bot.in_pool(thumbnail_jpeg, a.data)), name)]
        except ImgclsError:
            pass  # it was classified, so it decodes; without a thumbnail the answer still stands
        shown = embeds.prediction(pred, self.bot.settings.confidence_threshold, a.attachment.filename,
                                  image=name if files else "")
        try:
            message = await send(embeds=as_embeds(shown), files=files)
        except BaseException:
            await self.bot.db(stumpers.withdraw, sid)
            raise
        await self.bot.db(stumpers.set_message, sid, message.id)
        self.open[message.id] = sid
        self.bot.step_done(ws["id"], "learn", channel)  # the group moved on from reading the results
        target = channel.get_partial_message(message.id)
        try:
            for emoji in (embeds.RIGHT_EMOJI, embeds.WRONG_EMOJI):
                await target.add_reaction(emoji)
                await asyncio.sleep(self.bot.settings.reaction_pace)
        except discord.HTTPException as exc:  # the answer stands; people can still add the reactions themselves
            log.warning("could not seed ✅ and ❌ on answer %s: %s", sid, exc)

    async def _answer(self, interaction: discord.Interaction, attachments: Sequence[discord.Attachment]) -> None:
        images = image_attachments(attachments)
        if not images:
            raise InvalidInput("I see no image there; attach a JPEG, PNG, GIF or WebP.")
        ws = await workshop_here(interaction)
        await self.bot.db(self.bot.store.latest_run, ws["id"])  # no model yet: say so privately, before deferring
        await interaction.response.defer(thinking=True)
        answers = await self.predict(ws, images)
        first = [True]

        async def send(content: Optional[str] = None, **kwargs: Any) -> Any:
            if first[0]:  # the first answer replaces "thinking…"
                first[0] = False
                return await interaction.edit_original_response(content=content, **_edit_args(kwargs))
            return await interaction.followup.send(content or discord.utils.MISSING, wait=True, **kwargs)

        await self.post_answers(ws, answers, interaction.user.id, interaction.channel, send)

    # ---------------------------------------------------------- the entry points

    @app_commands.command(name="predict", description="Classify an image with the workshop's latest model")
    @app_commands.describe(image="The image to classify")
    @app_commands.guild_only()
    async def predict_cmd(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await self._answer(interaction, [image])

    async def classify_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self._answer(interaction, message.attachments)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.guild is None or not message.attachments:
            return
        mentioned = self.bot.user is not None and self.bot.user in message.mentions
        if not mentioned and not self.bot.settings.message_content_intent:
            return
        images = image_attachments(message.attachments)
        if not images:
            return
        try:
            ws = await self.bot.db(self.bot.store.find_workshop, guild_id=message.guild.id,
                                   channel_id=message.channel.id)
            answers = await self.predict(ws, images)
        except NotFound as exc:
            if mentioned:  # auto-classifying stays quiet where there is no workshop or model
                await message.reply(str(exc), mention_author=False)
            return
        except ImgclsError as exc:
            await message.reply(str(exc), mention_author=False)
            return
        except Exception:
            log.exception("classifying message %s failed", message.id)
            if mentioned:
                await message.reply("Sorry, I couldn't classify that; please try again.", mention_author=False)
            return

        async def send(content: Optional[str] = None, **kwargs: Any) -> Any:
            return await message.reply(content, mention_author=False, **kwargs)

        await self.post_answers(ws, answers, message.author.id, message.channel, send)

    # ---------------------------------------------------------- right, wrong, and the right label

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.member is not None and payload.member.bot:
            return
        await self._react(payload, on=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._react(payload, on=False)

    async def _react(self, payload: discord.RawReactionActionEvent, *, on: bool) -> None:
        sid = self.open.get(payload.message_id)
        if sid is None or (self.bot.user and payload.user_id == self.bot.user.id):
            return
        emoji = str(payload.emoji)
        async with self._locks.setdefault(sid, asyncio.Lock()):
            row = await self.bot.db(self.bot.stumpers.get, sid)
            if row["status"] not in ("open", "asking"):
                return
            if await self.bot.db(self.bot.stumpers.expire, ANSWER_HOURS):  # a day old: closed, whoever reacts
                await self.reload()
                if sid not in self.open:
                    return
            if on and emoji in (embeds.RIGHT_EMOJI, embeds.WRONG_EMOJI):  # someone judged an answer: step "try"
                self.bot.step_done(row["workshop_id"], "try", self.bot.get_channel(payload.channel_id))
            if emoji == embeds.WRONG_EMOJI:
                if on and await self.bot.db(self.bot.stumpers.ask, sid):
                    await self._ask({**row, "status": "asking"}, payload.channel_id)
                    await self._settle(sid, payload.channel_id)  # numbers picked before the ❌ count too
                return
            choice = _choices(row["legend"]).get(emoji)
            if choice is None:
                return
            try:
                await self.bot.db(self.bot.stumpers.vote, sid, str(payload.user_id), choice, on=on)
            except ConflictError:
                return
            await self._settle(sid, payload.channel_id)

    async def _ask(self, row: dict, channel_id: int) -> None:
        """Someone said wrong: show the legend and seed one reaction per label."""
        message = await self._message(channel_id, row["message_id"])
        if message is None:
            return
        legend = render.choice_emoji(row["legend"])
        numbers = [e for e, c in legend.items() if c.startswith(RELABEL)]
        try:
            await message.edit(content=render.clip(stumper_text(row, self.bot.settings.vote_quorum)))
            for emoji in numbers:
                await message.add_reaction(emoji)
                await asyncio.sleep(self.bot.settings.reaction_pace)
        except discord.HTTPException as exc:
            log.warning("could not ask for the right label on answer %s: %s", row["id"], exc)

    async def _settle(self, sid: int, channel_id: int) -> None:
        """After a vote: add the image once a quorum agrees on a label, and show where the vote stands."""
        stumpers, quorum = self.bot.stumpers, self.bot.settings.vote_quorum
        decision = await self.bot.db(stumpers.decision, sid, quorum)
        row = await self.bot.db(stumpers.get, sid)
        note = ""
        if decision.action == "relabel" and row["status"] == "asking":
            note = await self._add(row, decision)
            row = await self.bot.db(stumpers.get, sid)
            if row["status"] != "asking":
                self.open.pop(row["message_id"], None)
        if row["status"] == "open" and not note:
            return  # nobody said wrong yet: the answer shows no legend or tally
        votes = await self.bot.db(stumpers.votes, sid)
        message = await self._message(channel_id, row["message_id"])
        if message is not None:
            try:
                await message.edit(content=render.clip(stumper_text(row, quorum, votes, note)))
            except discord.HTTPException as exc:
                log.warning("could not update answer %s: %s", sid, exc)

    async def _add(self, row: dict, decision: Any) -> str:
        """Ingest the pasted image under the agreed label; what became of it, for the answer's text."""
        ws = await self.bot.db(self.bot.store.workshop, row["workshop_id"])
        try:
            data = await self.bot.db(self.bot.stumpers.pasted_bytes, row["id"])
            limits = await self.bot.db(self.bot.store.ingest_limits, ws["id"])
            outcome = await self.bot.in_pool(ingest, data, str(self.bot.store.images_dir), limits=limits)
            outcome = await self.bot.db(self.bot.stumpers.add_to_dataset, row["id"], outcome, decision.label,
                                        who=row["user_id"], decision=decision)
        except ImgclsError as exc:
            return f"It could not be added: {render.plain(exc)}"
        if not outcome.ok:
            return (f"It was not added: {REJECT_REASONS.get(outcome.reason, outcome.reason)} "
                    f"({render.plain(outcome.detail)}).")
        channel = self.bot.get_channel(row["channel_id"])
        if channel is not None:
            self.bot.step_done(ws["id"], "stump", channel)
        return (f"🎯 **Stumper!** It joined the dataset as image {outcome.image_id}, labelled "
                f"**{render.plain(decision.label)}**, thanks to <@{int(row['user_id'])}>. The next `/retrain` learns "
                "from it; a host can take it back with `/clean undo`.")

    async def _message(self, channel_id: int, message_id: int) -> Optional[discord.PartialMessage]:
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException:
                return None
        return channel.get_partial_message(message_id)

    async def recover(self) -> None:
        """Re-attach to open answers: recount their reactions, including ones made while the bot was offline."""
        for row in await self.bot.db(self.bot.stumpers.open_answers):
            try:
                await self._recount(row)
            except Exception:
                log.exception("could not recount answer %s", row["id"])

    async def _recount(self, row: dict) -> None:
        channel = self.bot.get_channel(row["channel_id"]) or await self.bot.fetch_channel(row["channel_id"])
        try:
            message = await channel.fetch_message(row["message_id"])
        except discord.NotFound:
            return
        self.open[message.id] = row["id"]
        choices = _choices(row["legend"])
        async with self._locks.setdefault(row["id"], asyncio.Lock()):
            picks = await reaction_picks(message, {*choices, embeds.WRONG_EMOJI})
            wrong = any(emoji == embeds.WRONG_EMOJI for _, emoji in picks)
            if wrong and await self.bot.db(self.bot.stumpers.ask, row["id"]):  # someone said wrong while offline
                row = await self.bot.db(self.bot.stumpers.get, row["id"])
                await self._ask(row, channel.id)
            votes: dict[str, set[str]] = {}
            for user, emoji in picks:  # counted as live: every pick, decided once someone said wrong
                if emoji in choices:
                    votes.setdefault(user, set()).add(choices[emoji])
            await self.bot.db(self.bot.stumpers.set_votes, row["id"], votes)
            await self._settle(row["id"], channel.id)


def _choices(legend: Sequence[str]) -> dict[str, str]:
    """{emoji: choice} on an answer: ✅ says the model was right ("keep"), a number picks the right label."""
    out = {embeds.RIGHT_EMOJI: KEEP}
    out.update({e: c for e, c in render.choice_emoji(legend).items() if c.startswith(RELABEL)})
    return out


def stumper_text(row: dict, quorum: int, votes: Optional[dict] = None, note: str = "") -> str:
    """The answer's text once someone said it is wrong: the legend, the tally, what became of the image."""
    if row["status"] == "open" and not note:
        return ""
    if row["status"] in ("added", "refused") and note:  # settled: what became of it, not the question
        return note
    choices = _choices(row["legend"])
    legend = " · ".join(f"{e} {render.plain(c[len(RELABEL):])}" for e, c in choices.items() if c != KEEP)
    lines = [f"Someone says that's wrong. **Which label is it?** React {legend}. When {quorum} of you agree, it "
             "joins the dataset as a stumper."]
    if votes:
        counts = tally(votes)
        shown = " ".join(f"{e} {counts[c]}" for e, c in choices.items() if counts.get(c))
        lines.append(f"Votes ({len(votes)} people): {shown or 'none yet'}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def _edit_args(kwargs: dict) -> dict:
    """send() arguments as edit_original_response() takes them (files become attachments)."""
    out = dict(kwargs)
    if "files" in out:
        out["attachments"] = out.pop("files")
    return out


async def setup(bot) -> None:
    await bot.add_cog(Classify(bot))
