"""/clean post|apply|undo and reaction voting on the latest run's top losses.

Each candidate is one message with the image; the bot seeds ✅ keep, 🗑️ delete and a number
per label. Votes are distinct non-bot users' reactions, kept in the store; after a restart
the bot recounts every open message, so votes cast while it was offline count too.
"""
from __future__ import annotations

import asyncio
import io
import logging
from typing import Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.credits import credit_line
from imgcls.errors import ConflictError, NotFound

from .. import render
from ..checks import host_only, workshop_here

log = logging.getLogger(__name__)


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

    @clean.command(name="post", description="Post the latest run's hardest images for a vote")
    @app_commands.describe(count="How many images to put up for a vote")
    @host_only()
    async def post(self, interaction: discord.Interaction, count: Optional[app_commands.Range[int, 1, 20]] = None) -> None:
        ws = await workshop_here(interaction)
        run = await self.bot.db(self.bot.store.latest_run, ws["id"])
        busy = await self.bot.db(self.bot.board.open_image_ids, ws["id"])
        picked = []
        for top in run["top_losses"] or []:
            image = await self.bot.db(self.bot.store.image, top["image_id"])
            if image["status"] == "active" and image["id"] not in busy:
                picked.append((top, image))
        picked = picked[: count or self.bot.settings.clean_count]
        if not picked:
            raise NotFound(f"Run {run['id']} has no top-loss images left to vote on; "
                           "`/clean apply` the open votes or `/retrain` first.")
        labels = await self.bot.db(self.bot.store.labels, ws["id"])
        await interaction.response.send_message(
            f"Voting on {len(picked)} images from run {run['id']}: react on each one. With at least "
            f"{self.bot.settings.vote_quorum} votes, a majority decides; ties keep. A host closes the vote with "
            "`/clean apply`.")
        self.bot.spawn(self._post_all(ws, run, picked, labels, interaction.channel), name=f"clean-post-{run['id']}")

    async def _post_all(self, ws: dict, run: dict, picked: list, labels: list[str], channel: Any) -> None:
        failed = 0
        for top, image in picked:
            try:
                await self._post_one(ws, run, top, image, labels, channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("posting image %s for a vote failed", image["id"])
                failed += 1
        if failed:
            await channel.send(f"{failed} of {len(picked)} images could not be put up for a vote; "
                               "the others are above.")

    async def _post_one(self, ws: dict, run: dict, top: dict, image: dict, labels: list[str], channel: Any) -> None:
        # relabel choices: every other label (a reaction each; Discord allows 20 per message)
        legend = [label for label in labels if label != image["label"]][: render.MAX_RELABEL_CHOICES]
        cid = await self.bot.db(self.bot.board.add_candidate, ws["id"], run["id"], image["id"],
                                predicted=top["predicted"], probability=top["probability"], loss=top["loss"],
                                channel_id=channel.id, legend=legend)
        cand = await self.bot.db(self.bot.board.candidate, cid)
        data = await asyncio.get_running_loop().run_in_executor(None, self.bot.store.image_path(image).read_bytes)
        message = await channel.send(render.candidate_text(cand, legend, {}, credit_line(image) or ""),
                                     file=discord.File(io.BytesIO(data), f"image-{image['id']}.jpg"),
                                     suppress_embeds=True)
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
            image = await self.bot.db(self.bot.store.image, cand["image_id"])
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
            text = render.candidate_text(cand, cand["legend"], votes, credit_line(image) or "", outcome)
            try:
                await channel.get_partial_message(cand["message_id"]).edit(content=text)
            except discord.HTTPException as exc:
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
            for reaction in message.reactions:
                choice = choices.get(str(reaction.emoji))
                if choice is None:
                    continue
                async for user in reaction.users():
                    if not user.bot:
                        votes.setdefault(str(user.id), set()).add(choice)
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

    async def _close_messages(self, summary: dict, channel_id: int) -> None:
        for r in summary["results"]:
            if r["message_id"]:
                cand = await self.bot.db(self.bot.board.candidate, r["candidate_id"])
                await self._refresh(cand, channel_id, outcome=render.outcome_text(r))

    @clean.command(name="undo", description="Revert the last applied clean-up")
    @host_only()
    async def undo(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        summary = await self.bot.db(self.bot.board.undo_last_apply, ws["id"], who=str(interaction.user.id))
        await interaction.response.send_message(
            f"Reverted the clean-up: {summary.get('deleted', 0)} images restored, "
            f"{summary.get('relabelled', 0)} relabels undone.")


async def setup(bot) -> None:
    await bot.add_cog(Cleaning(bot))
