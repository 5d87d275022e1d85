"""Classifying pasted images: /predict, the "Classify image" message command, mentioning the bot,
and (only with the message-content intent switched on) every image posted in a workshop channel.

Prediction runs in one persistent worker process that keeps the model cached.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.collect import IMAGE_SUFFIXES
from imgcls.errors import ImgclsError, InvalidInput, NotFound
from imgcls.predict import predict_in_worker
from imgcls.types import IngestLimits

from .. import render
from ..checks import workshop_here

log = logging.getLogger(__name__)

MAX_IMAGES = 4


def image_attachments(attachments: Sequence[discord.Attachment]) -> list[discord.Attachment]:
    return [a for a in attachments if (a.content_type or "").startswith("image/")
            or Path(a.filename).suffix.lower() in IMAGE_SUFFIXES][:MAX_IMAGES]


class Classify(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Classify image", callback=self.classify_message,
                                             allowed_contexts=app_commands.AppCommandContext(guild=True))

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    # ---------------------------------------------------------- the shared path

    async def predict(self, guild_id: int, channel_id: int, attachments: Sequence[discord.Attachment]) -> list[str]:
        """Answer lines for each image: the top 3 with probabilities, "not sure" under the threshold."""
        store = self.bot.store
        ws = await self.bot.db(store.find_workshop, guild_id=guild_id, channel_id=channel_id)
        run = await self.bot.db(store.latest_run, ws["id"])
        limit = IngestLimits().max_bytes
        lines = []
        for att in attachments:
            if att.size > limit:
                lines.append(f"`{render.code(att.filename)}`: {att.size / 1e6:.1f} MB is over the {limit / 1e6:.0f} MB "
                             "limit.")
                continue
            data = await att.read()
            try:
                [pred] = await asyncio.get_running_loop().run_in_executor(
                    self.bot.predict_pool, predict_in_worker, run["model_path"], run["model_sha256"], [data], 3,
                    run["id"], run.get("onnx_path"), run.get("onnx_sha256"))
            except InvalidInput as exc:
                lines.append(f"`{render.code(att.filename)}`: {render.plain(exc)}")
                continue
            lines.append(render.prediction_text(pred, self.bot.settings.confidence_threshold, att.filename))
        return lines

    async def _answer(self, interaction: discord.Interaction, attachments: Sequence[discord.Attachment]) -> None:
        images = image_attachments(attachments)
        if not images:
            raise InvalidInput("I see no image there; attach a JPEG, PNG, GIF or WebP.")
        ws = await workshop_here(interaction)
        await self.bot.db(self.bot.store.latest_run, ws["id"])  # no model yet: say so privately, before deferring
        await interaction.response.defer(thinking=True)
        lines = await self.predict(interaction.guild_id, interaction.channel_id, images)
        await interaction.followup.send(render.clip("\n\n".join(lines)))

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
            lines = await self.predict(message.guild.id, message.channel.id, images)
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
        await message.reply(render.clip("\n\n".join(lines)), mention_author=False)


async def setup(bot) -> None:
    await bot.add_cog(Classify(bot))
