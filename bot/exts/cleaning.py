"""/clean post|apply|undo and reaction voting on the latest run's suspect images.

Which images go up is imgcls's decision (imgcls.suspects: every image of the run, checked out
of fold); this cog renders it. Each candidate is one message with the image and the reason it
is suspect; the bot seeds ✅ keep, 🗑️ delete and a number per label. More than a handful of
candidates go in a thread of the workshop channel. Votes are distinct non-bot users'
reactions, kept in the store; after a restart the bot recounts every open message (in the
channel or its thread), so votes cast while it was offline count too.
"""
from __future__ import annotations

import asyncio
import functools
import io
import logging
from typing import Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.credits import credit_line
from imgcls.errors import ConflictError, NotFound
from imgcls.suspects import Selection, Suspect, explain

from .. import embeds, render
from ..checks import host_only, workshop_here
from . import as_embeds, reaction_picks

log = logging.getLogger(__name__)

MAX_POST = 50  # candidates one /clean post may put up (Discord shows the range on the option)


class Cleaning(commands.Cog):
    clean = app_commands.Group(name="clean", description="Vote on the images the model found hardest",
                               guild_only=True, default_permissions=discord.Permissions(manage_guild=True))

    def __init__(self, bot) -> None:
        self.bot = bot
        self.open: dict[int, int] = {}  # message id -> candidate id (open votes)
        self._edit_locks: dict[int, asyncio.Lock] = {}

    async def cog_load(self) -> None:
        for c in await self.bot.db(self.bot.board.open_candidates):
            if c["message_id"]:
                self.open[c["message_id"]] = c["id"]

    # ---------------------------------------------------------- posting candidates

    @clean.command(name="post", description="Put the images most likely to be wrong up for a vote")
    @app_commands.describe(count=f"How many images to put up for a vote (1-{MAX_POST}; default from the bot's settings)")
    @host_only()
    async def post(self, interaction: discord.Interaction,
                   count: Optional[app_commands.Range[int, 1, MAX_POST]] = None) -> None:
        ws = await workshop_here(interaction)
        asked = count or self.bot.settings.clean_count
        picked = await self.bot.db(self.bot.suspects.pick, ws["id"], asked)
        if not picked.suspects:
            raise NotFound(f"Run {picked.run_id} has no suspect images left to vote on; `/clean apply` the open "
                           "votes, or `/retrain` and vote on what the new run finds.")
        labels = await self.bot.db(self.bot.store.labels, ws["id"])
        in_thread = len(picked.suspects) > self.bot.settings.clean_thread_at and self._may_thread(interaction)
        intro = functools.partial(render.clean_intro, picked.run_id, len(picked.suspects), asked, picked.available,
                                  self.bot.settings.vote_quorum)
        await interaction.response.send_message(intro(in_thread))
        target = interaction.channel
        if in_thread:
            target = await self._thread(interaction, picked.run_id, intro(False)) or interaction.channel
        self.bot.spawn(self._post_all(ws, picked, labels, target), name=f"clean-post-{picked.run_id}")

    @staticmethod
    def _may_thread(interaction: discord.Interaction) -> bool:
        """Whether the bot may open a thread here and post in it (else the votes stay in the channel)."""
        channel, me = interaction.channel, interaction.guild.me if interaction.guild else None
        if me is None or not isinstance(channel, discord.TextChannel):
            return False
        perms = channel.permissions_for(me)
        return perms.create_public_threads and perms.send_messages_in_threads

    async def _thread(self, interaction: discord.Interaction, run_id: int, fallback: str) -> Optional[discord.Thread]:
        """A thread on the intro message for the votes, or None (the intro says so) if Discord refuses one."""
        try:
            intro = await interaction.original_response()
            # a week: a vote left open over a weekend still takes reactions
            return await intro.create_thread(name=f"Votes on run {run_id}", auto_archive_duration=10080)
        except discord.HTTPException as exc:
            log.warning("could not open a thread for the votes: %s", exc)
            try:
                await interaction.edit_original_response(content=fallback)
            except discord.HTTPException:
                pass
            return None

    async def _post_all(self, ws: dict, picked: Selection, labels: list[str], channel: Any) -> None:
        failed = 0
        for suspect in picked.suspects:
            try:
                await self._post_one(ws, picked.run_id, suspect, labels, channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("posting image %s for a vote failed", suspect.image_id)
                failed += 1
        if failed:
            await channel.send(f"{failed} of {len(picked.suspects)} images could not be put up for a vote; "
                               "the others are above.")

    async def _post_one(self, ws: dict, run_id: int, suspect: Suspect, labels: list[str], channel: Any) -> None:
        image = await self.bot.db(self.bot.store.image, suspect.image_id)
        # relabel choices: every other label (a reaction each; Discord allows 20 per message)
        legend = [label for label in labels if label != image["label"]][: render.MAX_RELABEL_CHOICES]
        cid = await self.bot.db(self.bot.board.add_candidate, ws["id"], run_id, image["id"],
                                predicted=suspect.predicted, probability=suspect.probability, channel_id=channel.id,
                                legend=legend, kind=suspect.kind, score=suspect.score,
                                reason=explain(suspect, suspect.kinds, quote=render.emphasis))
        try:
            cand = await self.bot.db(self.bot.board.candidate, cid)
            data = await asyncio.get_running_loop().run_in_executor(None, self.bot.store.image_path(image).read_bytes)
            name = f"image-{image['id']}.jpg"
            shown = embeds.candidate(cand, legend, credit_line(image) or "", image=name)
            message = await channel.send(render.vote_text(cand, legend, {}), embeds=as_embeds(shown),
                                         file=discord.File(io.BytesIO(data), name))
        except BaseException:
            await self.bot.db(self.bot.board.withdraw, cid)  # never posted: the image is free to go up again
            raise
        await self.bot.db(self.bot.board.set_message, cid, message.id)
        self.open[message.id] = cid
        for emoji in render.choice_emoji(legend):  # paced: one at a time, discord.py minds the rate limits
            await message.add_reaction(emoji)
            await asyncio.sleep(self.bot.settings.reaction_pace)

    # ---------------------------------------------------------- votes

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.member is not None and payload.member.bot:
            return
        await self._vote(payload, on=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._vote(payload, on=False)

    async def _vote(self, payload: discord.RawReactionActionEvent, *, on: bool) -> None:
        cid = self.open.get(payload.message_id)
        if cid is None or (self.bot.user and payload.user_id == self.bot.user.id):
            return
        cand = await self.bot.db(self.bot.board.candidate, cid)
        choice = render.choice_emoji(cand["legend"]).get(str(payload.emoji))
        if choice is None or cand["status"] != "open":
            return
        try:
            await self.bot.db(self.bot.board.vote, cid, str(payload.user_id), choice, on=on)
        except ConflictError:  # the vote closed meanwhile
            return
        await self._refresh(cand, payload.channel_id)

    async def _refresh(self, cand: dict, channel_id: int, outcome: str = "") -> None:
        """Rewrite the candidate's message with the current tally (one edit at a time per message)."""
        lock = self._edit_locks.setdefault(cand["id"], asyncio.Lock())
        async with lock:
            cand = await self.bot.db(self.bot.board.candidate, cand["id"])
            if not outcome and cand["status"] != "open":  # a late tally must not hide the result
                if cand["decision"] is None:
                    return
                d = cand["decision"]
                outcome = render.outcome_text({"action": d["action"], "label": d["label"], "votes": d["votes"],
                                               "voters": d["voters"], "why": d["why"], "old_label": cand["label"]})
            votes = await self.bot.db(self.bot.board.votes, cand["id"])
            text = render.vote_text(cand, cand["legend"], votes, outcome)
            try:
                channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
                if isinstance(channel, discord.Thread) and channel.archived:
                    await channel.edit(archived=False)  # an archived thread's messages cannot be edited
                await channel.get_partial_message(cand["message_id"]).edit(content=text)
            except discord.HTTPException as exc:  # the channel or thread was deleted, or the bot lost access
                log.warning("vote tally edit failed for message %s: %s", cand["message_id"], exc)

    async def recover(self) -> None:
        """Re-attach to open votes: count the reactions on each message, including ones made while offline."""
        for cand in await self.bot.db(self.bot.board.open_candidates):
            if cand["message_id"]:
                try:
                    await self._recount(cand)
                except Exception:
                    log.exception("could not recount vote %s", cand["id"])

    async def _recount(self, cand: dict) -> None:
        channel = self.bot.get_channel(cand["channel_id"]) or await self.bot.fetch_channel(cand["channel_id"])
        try:
            message = await channel.fetch_message(cand["message_id"])
        except discord.NotFound:
            log.info("vote %s's message is gone; its stored votes stand", cand["id"])
            return
        choices = render.choice_emoji(cand["legend"])
        self.open[message.id] = cand["id"]
        async with self._edit_locks.setdefault(cand["id"], asyncio.Lock()):
            votes: dict[str, set[str]] = {}
            for user, emoji in await reaction_picks(message, choices):
                votes.setdefault(user, set()).add(choices[emoji])
            await self.bot.db(self.bot.board.set_votes, cand["id"], votes)
        await self._refresh(cand, channel.id)

    # ---------------------------------------------------------- apply and undo

    @clean.command(name="apply", description="Close the open votes and apply the deletes and relabels")
    @host_only()
    async def apply(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        summary = await self.bot.db(self.bot.board.apply, ws["id"], quorum=self.bot.settings.vote_quorum,
                                    who=str(interaction.user.id))
        await interaction.response.send_message(render.apply_summary(summary))
        for r in summary["results"]:
            self.open.pop(r["message_id"], None)
        self.bot.spawn(self._close_messages(summary, interaction.channel_id), name="clean-close")
        self.bot.step_done(ws["id"], "clean", interaction.channel)

    async def _close_messages(self, summary: dict, channel_id: int) -> None:
        for r in summary["results"]:
            if r["message_id"]:
                cand = await self.bot.db(self.bot.board.candidate, r["candidate_id"])
                await self._refresh(cand, cand["channel_id"] or channel_id, outcome=render.outcome_text(r))

    @clean.command(name="undo", description="Revert the last applied clean-up")
    @host_only()
    async def undo(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        summary = await self.bot.db(self.bot.board.undo_last_apply, ws["id"], who=str(interaction.user.id))
        added = summary.get("added", 0)
        await interaction.response.send_message(
            f"Reverted the clean-up: {summary.get('deleted', 0)} images restored, "
            f"{summary.get('relabelled', 0)} relabels undone"
            + (f", {added} stumper{'s' if added != 1 else ''} set aside again." if added else "."))


async def setup(bot) -> None:
    await bot.add_cog(Cleaning(bot))
