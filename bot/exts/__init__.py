"""One extension per area of the workshop; each ends with `async def setup(bot)`. What they share with
Discord's objects lives here: embeds from bot/embeds.py's dicts, and the reactions on a vote message."""
from __future__ import annotations

from typing import Collection

import discord


def as_embeds(items: list[dict]) -> list[discord.Embed]:
    """bot/embeds.py's dicts (within Discord's limits already) as discord.py embeds."""
    return [discord.Embed.from_dict(e) for e in items]


async def reaction_picks(message: discord.Message, emojis: Collection[str]) -> list[tuple[str, str]]:
    """(user id, emoji) for every person's reaction among `emojis` on a message, bots left out: a vote recounted
    from Discord after a restart, including reactions made while the bot was offline."""
    picks = []
    for reaction in message.reactions:
        emoji = str(reaction.emoji)
        if emoji not in emojis:
            continue
        async for user in reaction.users():
            if not user.bot:
                picks.append((str(user.id), emoji))
    return picks
