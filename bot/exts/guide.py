"""The guided workshop: the next step posted when one is done, and /leaderboard.

Other cogs report what happened with `bot.step_done(workshop_id, "train", channel)`; bot.guide
decides whether that finishes a step and which to announce (bot/guide.py, texts in
bot/guide.toml). Announcing never gets in the way of the command that caused it: it runs in
the background, and a failure is logged, not shown.
"""
from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.leaderboard import leaderboard

from .. import embeds
from ..guide import advance

log = logging.getLogger(__name__)


def as_embeds(items: list[dict]) -> list[discord.Embed]:
    return [discord.Embed.from_dict(e) for e in items]


class Guide(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    async def top(self, guild_id: int, n: int = 3) -> list:
        return await self.bot.db(leaderboard, self.bot.store, guild_id, n)

    async def step_done(self, workshop_id: int, event: str, channel: Any) -> None:
        guide = self.bot.guide
        news = await self.bot.db(advance, self.bot.store, workshop_id, event, guide)
        if news.post is None and not news.finished:
            return
        guild_id = getattr(getattr(channel, "guild", None), "id", None)
        top = await self.top(guild_id) if guild_id else []
        if news.finished:
            await channel.send(embeds=as_embeds(embeds.finale(guide.finale, top)))
            return
        n = guide.index(news.post.key)
        done = f"✅ Done: {guide.steps[n - 1].title}" if n else ""
        await channel.send(embeds=as_embeds(embeds.guide_step(news.post, n + 1, len(guide.steps), top, done=done)))

    @app_commands.command(name="leaderboard", description="Who helped most in this server: images, votes, stumpers")
    @app_commands.guild_only()
    async def leaderboard_cmd(self, interaction: discord.Interaction) -> None:
        rows = await self.top(interaction.guild_id, 10)
        name = interaction.guild.name if interaction.guild else "this server"
        await interaction.response.send_message(embeds=as_embeds(embeds.leaderboard(rows, name)),
                                                allowed_mentions=discord.AllowedMentions.none())


async def setup(bot) -> None:
    await bot.add_cog(Guide(bot))
