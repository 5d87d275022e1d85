"""Who may do what, and which workshop an interaction is about."""
from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from imgcls.errors import NotFound

log = logging.getLogger(__name__)


class NotHost(app_commands.CheckFailure):
    """Raised for host-only commands; the error handler answers it ephemerally."""


def is_host(interaction: discord.Interaction) -> bool:
    """Manage Server, or the host role from the settings (by name or id)."""
    member = interaction.user
    if not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.manage_guild:
        return True
    role = interaction.client.settings.host_role.strip()
    return bool(role) and any(r.name == role or str(r.id) == role for r in member.roles)


def host_only():
    """Marked for Manage Server in Discord's UI, and checked again when the command runs."""
    def predicate(interaction: discord.Interaction) -> bool:
        if not is_host(interaction):
            role = interaction.client.settings.host_role
            raise NotHost("Only the workshop host can do that: you need Manage Server"
                          + (f" or the '{role}' role." if role else "."))
        return True

    def decorator(func):
        return app_commands.default_permissions(manage_guild=True)(app_commands.check(predicate)(func))

    return decorator


async def workshop_here(interaction: discord.Interaction) -> dict[str, Any]:
    """The active workshop of this channel (and this server only), or NotFound saying what to do."""
    if interaction.guild_id is None:
        raise NotFound("Workshops run in server channels, not in direct messages.")
    bot = interaction.client
    try:
        return await bot.db(bot.store.find_workshop, guild_id=interaction.guild_id, channel_id=interaction.channel_id)
    except NotFound:
        raise NotFound("There is no workshop in this channel; a host can start one with `/workshop start`.") from None


async def label_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The labels of this channel's workshop that contain what was typed (never another server's)."""
    try:
        ws = await workshop_here(interaction)
        labels = await interaction.client.db(interaction.client.store.labels, ws["id"])
    except Exception:  # autocomplete must answer; an empty list is the honest answer
        return []
    needle = current.casefold().strip()
    return [app_commands.Choice(name=label, value=label) for label in labels if needle in label.casefold()][:25]
