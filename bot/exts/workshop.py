"""/workshop start|status|reset and /labels add|remove|list."""
from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.errors import InvalidInput, NotFound
from imgcls.store import parse_labels

from .. import embeds, render
from .. import guide as guide_state
from ..checks import host_only, label_autocomplete, workshop_here
from . import as_embeds

log = logging.getLogger(__name__)


class Workshop(commands.Cog):
    workshop = app_commands.Group(name="workshop", description="Start, inspect or reset this channel's workshop",
                                  guild_only=True)
    labels = app_commands.Group(name="labels", description="The labels the classifier learns", guild_only=True)

    def __init__(self, bot) -> None:
        self.bot = bot

    # ---------------------------------------------------------- /workshop

    @workshop.command(name="start", description="Start a workshop in this channel with some labels")
    @app_commands.describe(name="A name for the workshop", labels="Comma-separated labels, e.g. sunflowers, lavender, roses",
                           guide="Post each next step with what it means, for beginners (default: on)")
    @host_only()
    async def start(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100],
                    labels: app_commands.Range[str, 1, 1000], guide: bool = True) -> None:
        names = parse_labels(labels)
        if len(names) > self.bot.settings.max_labels:
            raise InvalidInput(f"This bot allows at most {self.bot.settings.max_labels} labels; you gave {len(names)}.")
        if not interaction.app_permissions.embed_links:  # else Discord drops every result, vote and answer silently
            raise InvalidInput("I need the Embed Links permission in this channel: results, votes and answers are "
                               "embeds. A server admin can add it to my role or to this channel, then start again.")
        ws = await self.bot.db(self.bot.store.create_workshop, name, names, guild_id=interaction.guild_id,
                               channel_id=interaction.channel_id, host_id=interaction.user.id)
        got = await self.bot.db(self.bot.store.labels, ws["id"])
        steps = self.bot.guide
        first = await self.bot.db(guide_state.start, self.bot.store, ws["id"], steps, guide)
        text = (f"Workshop **{render.plain(ws['name'])}** started by {interaction.user.mention} with labels: "
                f"{', '.join(f'**{render.plain(label)}**' for label in got) or '(none yet: add some with `/labels add`)'}.")
        if not guide:
            await interaction.response.send_message(
                text + "\nNext: a host runs `/images download`, anyone can add photos with `/images add`, then "
                "`/train`. (The guide is off; `/workshop guide on:True` turns it on.)")
            return
        shown = embeds.fit(embeds.plan(guide_state.plan({}, steps), steps.intro)
                           + embeds.guide_step(first, 1, len(steps.steps)))
        await interaction.response.send_message(text, embeds=as_embeds(shown))

    @workshop.command(name="status", description="Labels, image counts, runs, the queue and the model in use")
    async def status(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        store = self.bot.store
        counts = await self.bot.db(store.counts, ws["id"])
        runs = await self.bot.db(store.runs, ws["id"])
        download = await self.bot.db(store.active_download, ws["id"])
        done = [r for r in runs if r["status"] == "done"]
        lines = [f"**{render.plain(ws['name'])}** — {sum(counts.values())} images", render.counts_block(counts)]
        if done:
            m = done[-1]["metrics"] or {}
            lines.append(f"Model in use: run {done[-1]['id']} ({(done[-1]['params'] or {}).get('arch')}): "
                         f"{render.right_of(m)} on its validation images.")
        else:
            lines.append("No trained model yet.")
        jobs = self.bot.queue.jobs_for(ws["id"])
        for job in jobs:
            lines.append(f"Run {job.run_id}: " + ("training now." if job.position == 0 else
                                                   f"queued, position {job.position}."))
        lines.append(f"Queue on this server: {self.bot.queue.waiting_in(interaction.guild_id)} waiting, "
                     f"{len(self.bot.queue.running)} training on {self.bot.queue.slots} slot(s).")
        lines.append(render.where_line(await self._where()))
        if download:
            lines.append(f"A download of {download['per_label']} per label is running.")
        if runs:
            names = {str(r["requested_by"]): f"<@{r['requested_by']}>" for r in runs[-3:]
                     if str(r.get("requested_by") or "").isdigit()}
            lines.append("Recent runs:\n" + render.runs_list(runs[-3:], names))
        on, _, _ = guide_state.state(ws["settings"])
        plan = embeds.plan(guide_state.plan(ws["settings"], self.bot.guide), guide_on=on)
        await interaction.response.send_message(render.clip("\n".join(lines)), embeds=as_embeds(plan))

    @workshop.command(name="guide", description="Turn the guided steps on or off for this workshop")
    @app_commands.describe(on="True: post each next step with what it means; False: stay quiet")
    @host_only()
    async def guide_cmd(self, interaction: discord.Interaction, on: bool) -> None:
        ws = await workshop_here(interaction)
        nxt = await self.bot.db(guide_state.switch, self.bot.store, ws["id"], on, self.bot.guide)
        if not on:
            await interaction.response.send_message("The guide is off: I won't post the next steps. "
                                                    "`/workshop status` still shows the plan.")
            return
        if nxt is None:
            await interaction.response.send_message("The guide is on; every step of the plan is done already.")
            return
        steps = self.bot.guide
        await interaction.response.send_message(
            "The guide is on. Here is what to do next:",
            embeds=as_embeds(embeds.guide_step(nxt, steps.index(nxt.key) + 1, len(steps.steps))))
        await self.bot.db(guide_state.posted, self.bot.store, ws["id"], nxt.key)

    async def _where(self) -> dict:
        """The trainer's describe(), without holding up the reply when a GPU cluster is slow to answer."""
        describe = getattr(self.bot.trainer, "describe", None)
        if describe is None:
            return {"kind": "local", "slots": self.bot.settings.train_slots}
        try:
            return await asyncio.wait_for(asyncio.to_thread(describe), 2.0)
        except asyncio.TimeoutError:
            return {"kind": "dask", "address": getattr(self.bot.trainer, "address", "?"), "slow": True}

    @workshop.command(name="reset", description="Archive this channel's workshop (nothing is deleted)")
    @app_commands.describe(confirm="Type the workshop's name to confirm")
    @host_only()
    async def reset(self, interaction: discord.Interaction, confirm: str) -> None:
        ws = await workshop_here(interaction)
        typed = confirm.replace(render.ZWSP, "").replace("ˋ", "`").strip()  # as shown by render.code, copied
        if typed.casefold() != ws["name"].casefold():
            raise InvalidInput(f"To archive the workshop, type its name exactly: "
                               f"`/workshop reset confirm:{render.code(ws['name'])}`.")
        if self.bot.queue.jobs_for(ws["id"]):
            raise InvalidInput("A training run for this workshop is queued or running; wait for it to finish.")
        images = self.bot.get_cog("Images")
        task = images.downloads.pop(ws["id"], None) if images else None
        if task is not None and not task.done():
            task.cancel()
        active = await self.bot.db(self.bot.store.active_download, ws["id"])
        if active:
            await self.bot.db(self.bot.store.update_download, active["id"], status="cancelled")
        await self.bot.db(self.bot.store.archive_workshop, ws["id"], who=str(interaction.user.id))
        await interaction.response.send_message(
            f"Workshop **{render.plain(ws['name'])}** is archived: its images, runs and votes are kept in the database. "
            "Start a new one with `/workshop start`.")

    # ---------------------------------------------------------- /labels

    @labels.command(name="add", description="Add labels (comma-separated)")
    @app_commands.describe(labels="e.g. tulips, daisies")
    @host_only()
    async def labels_add(self, interaction: discord.Interaction, labels: app_commands.Range[str, 1, 1000]) -> None:
        ws = await workshop_here(interaction)
        names = parse_labels(labels)
        have = await self.bot.db(self.bot.store.labels, ws["id"])
        if len(have) + len(names) > self.bot.settings.max_labels:
            raise InvalidInput(f"This bot allows at most {self.bot.settings.max_labels} labels per workshop.")
        added = await self.bot.db(self.bot.store.add_labels, ws["id"], names)
        await interaction.response.send_message(f"Added {', '.join(f'**{render.plain(x)}**' for x in added)}.")

    @labels.command(name="remove", description="Remove a label (its images are soft-deleted, undoably)")
    @app_commands.autocomplete(label=label_autocomplete)
    @host_only()
    async def labels_remove(self, interaction: discord.Interaction, label: str) -> None:
        ws = await workshop_here(interaction)
        n = await self.bot.db(self.bot.store.remove_label, ws["id"], label, who=str(interaction.user.id))
        await interaction.response.send_message(
            f"Removed **{render.plain(label)}**" + (f"; its {n} images are set aside (deleted, recoverable)." if n else "."))

    @labels.command(name="list", description="The labels and how many images each has")
    async def labels_list(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        counts = await self.bot.db(self.bot.store.counts, ws["id"])
        if not counts:
            raise NotFound("This workshop has no labels yet; add some with `/labels add`.")
        await interaction.response.send_message(render.counts_block(counts), ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(Workshop(bot))
