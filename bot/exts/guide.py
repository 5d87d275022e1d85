"""The guided workshop: the next step posted when one is done, and /leaderboard.

Other cogs report what happened with `bot.step_done(workshop_id, "train", channel)`; bot.guide
decides whether that finishes a step and which to announce (bot/guide.py, texts in
bot/guide.toml). Announcing never gets in the way of the command that caused it: it runs in
the background, and a failure is logged, not shown.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.leaderboard import leaderboard

from .. import embeds
from . import as_embeds
from ..guide import advance, posted

log = logging.getLogger(__name__)


class Guide(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self._names: dict[tuple[int, str], str] = {}  # (guild, user) -> the name the server shows
        self._posting: set[tuple[int, str]] = set()  # (workshop, step) being announced now: once, not twice
        self._locks: dict[int, asyncio.Lock] = {}

    async def top(self, guild_id: int, n: int = 3) -> list:
        return await self.bot.db(leaderboard, self.bot.store, guild_id, n)

    async def names(self, guild: Any, rows: list) -> dict[str, str]:
        """Display names of the people in `rows`, fetched one member at a time (no privileged intent needed) and
        remembered; anyone who cannot be fetched (they left) is shown as a mention."""
        out = {}
        for r in rows:
            key = (guild.id, str(r.user_id))
            if key not in self._names and str(r.user_id).isdigit():
                member = guild.get_member(int(r.user_id))
                try:
                    member = member or await guild.fetch_member(int(r.user_id))
                except discord.HTTPException:
                    continue
                self._names[key] = member.display_name
            if key in self._names:
                out[str(r.user_id)] = self._names[key]
        return out

    async def step_done(self, workshop_id: int, event: str, channel: Any) -> None:
        async with self._locks.setdefault(workshop_id, asyncio.Lock()):  # one announcement at a time, in order
            await self._step_done(workshop_id, event, channel)

    async def _step_done(self, workshop_id: int, event: str, channel: Any) -> None:
        guide = self.bot.guide
        news = await self.bot.db(advance, self.bot.store, workshop_id, event, guide)
        key = "finale" if news.finished else news.post.key if news.post else None
        if key is None or (workshop_id, key) in self._posting:
            return
        self._posting.add((workshop_id, key))
        try:
            guild = getattr(channel, "guild", None)
            top = await self.top(guild.id) if guild is not None else []
            names = await self.names(guild, top) if top else {}
            if news.finished:
                shown = embeds.finale(guide.finale, top, names)
            else:
                n = guide.index(news.post.key)
                done = f"✅ Done: {guide.steps[n - 1].title}" if n else ""
                shown = embeds.guide_step(news.post, n + 1, len(guide.steps), top, done=done, names=names)
            await channel.send(embeds=as_embeds(shown))
            await self.bot.db(posted, self.bot.store, workshop_id, key)
        finally:
            self._posting.discard((workshop_id, key))

    @app_commands.command(name="leaderboard", description="Who helped most in this server: images, votes, stumpers")
    @app_commands.guild_only()
    async def leaderboard_cmd(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)  # the database and the names may take a moment
        rows = await self.top(interaction.guild_id, 10)
        names = await self.names(interaction.guild, rows)
        await interaction.followup.send(embeds=as_embeds(embeds.leaderboard(rows, interaction.guild.name, names)),
                                                allowed_mentions=discord.AllowedMentions.none())


async def setup(bot) -> None:
    await bot.add_cog(Guide(bot))
