"""One place that turns errors into replies: imgcls errors and refusals become short ephemeral
messages that say what to do; anything unexpected is logged with its traceback and answered
with an apology. A traceback never reaches the channel."""
from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.errors import ImgclsError

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on my side. It has been logged; please try again in a moment."


def message_for(error: Exception) -> tuple[str, bool]:
    """(reply text, expected?) for an error raised by a command."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    elif isinstance(error, app_commands.TransformerError) and isinstance(error.__cause__, ImgclsError):
        error = error.__cause__
    if isinstance(error, ImgclsError):
        return str(error), True
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s.", True
    if isinstance(error, app_commands.NoPrivateMessage):
        return "That works in a server channel, not in direct messages.", True
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You can't use that command here.", True
    if isinstance(error, app_commands.TransformerError):
        return f"'{error.value}' is not a valid value for that option.", True
    if isinstance(error, discord.Forbidden):
        return ("I'm missing a permission in this channel (I need Send Messages, Embed Links, Attach Files, "
                "Add Reactions and Read Message History)."), True
    return APOLOGY, False


async def reply(interaction: discord.Interaction, text: str) -> None:
    text = text[:1900]
    try:
        if interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            # a public "thinking…" message would turn the first followup public: remove it first
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                pass
            await interaction.followup.send(text, ephemeral=True)
        elif interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not send the error reply for %s: %s", interaction.command and interaction.command.name, exc)


class Errors(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.tree.on_error = self.on_app_command_error

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = app_commands.CommandTree.on_error.__get__(self.bot.tree)

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        text, expected = message_for(error)
        if expected:
            log.info("refused %s for %s: %s", interaction.command and interaction.command.qualified_name,
                     interaction.user, text)
        else:
            log.error("command %s failed", interaction.command and interaction.command.qualified_name,
                      exc_info=error)
        await reply(interaction, text)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Errors(bot))
