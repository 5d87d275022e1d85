"""/images download|add|show and /credits: filling the dataset, with credit to the photographers."""
from __future__ import annotations

import asyncio
import io
import logging
from typing import Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.credits import credit_line
from imgcls.download import download_images
from imgcls.errors import ConflictError, InvalidInput, NotFound
from imgcls.ingest import ingest
from imgcls.interpret import render_grid
from imgcls.search import Searcher, check_sources
from imgcls.types import REJECT_REASONS, DownloadProgress, ImageMeta

from .. import render
from ..checks import host_only, label_autocomplete, workshop_here

log = logging.getLogger(__name__)


class Images(commands.Cog):
    images = app_commands.Group(name="images", description="Download, add and look at the workshop's images",
                                guild_only=True)

    def __init__(self, bot) -> None:
        self.bot = bot
        self.downloads: dict[int, asyncio.Task] = {}  # workshop id -> running download

    # ---------------------------------------------------------- /images download

    @images.command(name="download", description="Search the web and download images for every label")
    @app_commands.describe(per_label="How many images each label should have",
                           sources="Comma-separated: openverse, wikimedia, ddg (default from the bot's settings)")
    @host_only()
    async def download(self, interaction: discord.Interaction, per_label: app_commands.Range[int, 1, 1000],
                       sources: Optional[str] = None) -> None:
        ws = await workshop_here(interaction)
        cap = self.bot.settings.max_images_per_label
        if per_label > cap:
            raise InvalidInput(f"This bot allows at most {cap} images per label; ask for {cap} or fewer.")
        chosen = check_sources(sources or self.bot.settings.download_sources)
        if ws["id"] in self.downloads and not self.downloads[ws["id"]].done():
            raise ConflictError("A download is already running for this workshop; its progress message is above.")
        if not await self.bot.db(self.bot.store.labels, ws["id"]):
            raise NotFound("This workshop has no labels yet; add some with `/labels add`.")
        download_id = await self.bot.db(self.bot.store.start_download, ws["id"], per_label, chosen,
                                        requested_by=str(interaction.user.id), channel_id=interaction.channel_id)
        await interaction.response.send_message(
            f"Downloading up to {per_label} images per label from {', '.join(chosen)}; progress below.")
        self._start(ws, download_id, per_label, chosen, interaction.channel, str(interaction.user.id))

    def _start(self, ws: dict, download_id: int, per_label: int, sources: list[str], channel: Any,
               requested_by: str, note: str = "") -> None:
        task = self.bot.spawn(self._run(ws, download_id, per_label, sources, channel, requested_by, note),
                              name=f"download-{download_id}")
        self.downloads[ws["id"]] = task

    async def _run(self, ws: dict, download_id: int, per_label: int, sources: list[str], channel: Any,
                   requested_by: str, note: str) -> None:
        store = self.bot.store
        counts = await self.bot.db(store.counts, ws["id"])
        state = {label: DownloadProgress(label, min(n, per_label), 0, per_label) for label, n in counts.items()}
        message = await channel.send(render.download_progress(list(state.values()), note=note))
        await self.bot.db(store.update_download, download_id, message_id=message.id)
        dirty = asyncio.Event()

        def progress(p: DownloadProgress) -> None:
            state[p.label] = p
            dirty.set()

        async def refresh() -> None:  # at most one edit per interval
            while True:
                await dirty.wait()
                dirty.clear()
                try:
                    await message.edit(content=render.download_progress(list(state.values()), note=note))
                except discord.HTTPException as exc:
                    log.warning("download progress edit failed: %s", exc)
                await asyncio.sleep(self.bot.settings.progress_interval)

        updater = asyncio.create_task(refresh())
        try:
            searcher = Searcher(self.bot.session, self.bot.search_config, cache=store, db=self.bot.db_executor)
            report = await download_images(
                session=self.bot.session, store=store, db=self.bot.db_executor, pool=self.bot.pool,
                source=searcher, workshop_id=ws["id"], per_label=per_label, sources=sources,
                config=self.bot.download_config, progress=progress, added_by=requested_by)
        except asyncio.CancelledError:
            raise  # shutting down: the download stays 'running' and resumes after the restart
        except Exception as exc:
            if self.bot.closing:  # workers stopped under it: an interruption, resumed after the restart
                return
            log.exception("download %s failed", download_id)
            await self.bot.db(store.update_download, download_id, status="failed", summary=str(exc))
            try:
                await message.edit(content=render.download_progress(
                    list(state.values()), done=True, note="The download stopped with an error; run it again."))
            except discord.HTTPException:
                pass
            return
        finally:
            updater.cancel()
        await self.bot.db(store.update_download, download_id, status="done", summary=report.summary())
        short = "" if report.complete else ("Some labels ran out of usable results; add photos with `/images add` "
                                            "or try other sources.")
        errors = render.plain(" ".join(report.errors))  # they name labels
        await message.edit(content=render.download_progress(
            list(report.labels), done=True, note=" ".join(x for x in (
                note, f"{report.added} new images in {report.seconds:.0f} s.", short, errors) if x)))
        if any(p.stored for p in report.labels):
            self.bot.step_done(ws["id"], "gather", channel)

    async def recover(self) -> None:
        """Resume downloads a restart interrupted: what is stored already is not fetched again."""
        for row in self.bot.interrupted_downloads:
            try:
                ws = await self.bot.db(self.bot.store.workshop, row["workshop_id"])
                channel = self.bot.get_channel(row["channel_id"] or ws["channel_id"])
                if ws["status"] != "active" or channel is None:
                    await self.bot.db(self.bot.store.update_download, row["id"], status="cancelled")
                    continue
                await self.bot.db(self.bot.store.update_download, row["id"], status="running")
                self._start(ws, row["id"], row["per_label"], row["sources"].split(","), channel,
                            row["requested_by"], note="Resumed after a restart.")
            except Exception:
                log.exception("could not resume download %s", row["id"])

    # ---------------------------------------------------------- /images add

    @images.command(name="add", description="Add your own photos to a label")
    @app_commands.describe(label="Which label the photos show", image="A photo", image2="Another photo",
                           image3="Another photo", image4="Another photo")
    @app_commands.autocomplete(label=label_autocomplete)
    async def add(self, interaction: discord.Interaction, label: str, image: discord.Attachment,
                  image2: Optional[discord.Attachment] = None, image3: Optional[discord.Attachment] = None,
                  image4: Optional[discord.Attachment] = None) -> None:
        ws = await workshop_here(interaction)
        store = self.bot.store
        label = await self.bot.db(store.resolve_label, ws["id"], label)
        have = (await self.bot.db(store.counts, ws["id"])).get(label, 0)
        if have >= self.bot.settings.max_images_per_label:
            raise InvalidInput(f"**{render.plain(label)}** already has {have} images, the most this bot allows per label.")
        await interaction.response.defer(thinking=True)
        limits = await self.bot.db(store.ingest_limits, ws["id"])
        lines, added = [], False
        for att in [a for a in (image, image2, image3, image4) if a is not None]:
            line, ok = await self._add_one(ws["id"], label, att, limits, str(interaction.user.id))
            lines.append(f"`{render.code(att.filename)}`: {line}")
            added = added or ok
        await interaction.followup.send(f"{interaction.user.mention} → **{render.plain(label)}**\n" + "\n".join(lines))
        if added:
            self.bot.step_done(ws["id"], "gather", interaction.channel)

    async def _add_one(self, workshop_id: int, label: str, att: discord.Attachment, limits,
                       who: str) -> tuple[str, bool]:
        """(what became of the photo, whether it was added)."""
        if att.size > limits.max_bytes:
            return f"refused: {att.size / 1e6:.1f} MB is over the {limits.max_bytes / 1e6:.0f} MB limit.", False
        try:
            data = await att.read()
        except discord.HTTPException as exc:
            return f"refused: Discord did not send the file ({exc.status}); try again.", False
        outcome = await self.bot.in_pool(ingest, data, str(self.bot.store.images_dir), limits=limits)
        meta = ImageMeta(source="upload", title=att.filename[:200], added_by=who)
        outcome = await self.bot.db(self.bot.store.add_image, workshop_id, label, outcome, meta)
        if outcome.ok:
            return f"added as image {outcome.image_id}.", True
        return f"refused: {REJECT_REASONS.get(outcome.reason, outcome.reason)} ({outcome.detail}).", False

    # ---------------------------------------------------------- /images show and /credits

    @images.command(name="show", description="A preview grid of a label's images, with credits")
    @app_commands.autocomplete(label=label_autocomplete)
    async def show(self, interaction: discord.Interaction, label: str) -> None:
        ws = await workshop_here(interaction)
        rows = await self.bot.db(self.bot.store.images, ws["id"], label=label)
        if not rows:
            raise NotFound(f"**{render.plain(label)}** has no images yet; add some with `/images add` or `/images download`.")
        await interaction.response.defer(thinking=True)
        picked = rows[-12:]
        tiles = [(str(self.bot.store.image_path(r)), f"#{r['id']}", credit_line(r, short=True)) for r in picked]
        png = await self.bot.in_pool(render_grid, tiles, 4, title=f"{rows[0]['label']}: {len(rows)} images")
        await interaction.followup.send(f"The latest {len(picked)} of {len(rows)} images labelled "
                                        f"**{render.plain(rows[0]['label'])}**.",
                                        file=discord.File(io.BytesIO(png), "preview.png"))
        self.bot.step_done(ws["id"], "look", interaction.channel)

    @app_commands.command(name="credits", description="Who made the workshop's images, and their licences")
    @app_commands.guild_only()
    async def credits(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        rows = await self.bot.db(self.bot.store.images, ws["id"])
        credited = [(r, line) for r in rows if (line := credit_line(r))]
        lines = [f"#{r['id']} ({render.plain(r['label'])}): {render.plain(line)}" for r, line in credited]
        own = len(rows) - len(lines)
        head = f"Credits for {len(lines)} images" + (f" ({own} were the participants' own photos)." if own else ".")
        if not lines:
            await interaction.response.send_message(head)
            return
        text = head + "\n" + "\n".join(lines)
        if len(text) <= render.MESSAGE_LIMIT:
            await interaction.response.send_message(text, suppress_embeds=True)
        else:
            data = "".join(f"#{r['id']} ({r['label']}): {line}\n" for r, line in credited).encode()  # a file: as is
            await interaction.response.send_message(head + " The full list is attached.",
                                                    file=discord.File(io.BytesIO(data), "credits.txt"))


async def setup(bot) -> None:
    await bot.add_cog(Images(bot))
