"""/train, /retrain, /results, /runs and /export: training runs with live progress in the channel.

A run's progress lives in an ordinary channel message whose id is stored, so it keeps
updating after the 15-minute interaction token has expired.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from imgcls.compare import compare_runs
from imgcls.errors import ConflictError, InvalidInput, ModelRefused, NotFound
from imgcls.runs import RunParams, prepare_run, record_outcome
from imgcls.train import train
from imgcls.types import ARCHS, Progress, to_plain

from imgcls.interpret import side_by_side

from .. import embeds, render
from ..checks import host_only, workshop_here
from ..queue import Job, TrainQueue
from . import as_embeds

log = logging.getLogger(__name__)

#: A run's pictures, posted with its results: (artefact, file name suffix).
RESULT_PICTURES = (("confusion", "confusion"), ("top_losses", "top-losses"), ("learning_curve", "learning-curve"))


class RunView:
    """What a running job's status message shows, built from progress events."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.state = "queued"
        self.stage = ""
        self.epochs: list[dict[str, Any]] = []
        self.epoch = (0, 0)
        self.batch = (0, 0)
        self.position: Optional[int] = None
        self.recipe = ""  # the automatic recipe's line: what it chose and why
        self._t0: Optional[float] = None
        self._done_batches = 0

    def update(self, p: Progress) -> None:
        self.state = "training"
        if p.kind in ("stage", "notice"):
            self.stage = p.message
        elif p.kind == "recipe":
            self.recipe = p.message
        elif p.kind == "epoch_start":
            self._t0 = self._t0 or time.monotonic()
            self.stage = ""
            self.epoch, self.batch = (p.epoch + 1, p.total_epochs), (0, p.total_batches)
        elif p.kind == "batch":
            self._done_batches += 1
            self.batch = (p.batch, p.total_batches)
        elif p.kind == "epoch_end" and p.metrics is not None:
            self.epochs.append(to_plain(p.metrics))

    def eta(self) -> Optional[float]:
        if not self._t0 or not self._done_batches or not self.batch[1]:
            return None
        per_batch = (time.monotonic() - self._t0) / self._done_batches
        left = (self.epoch[1] - self.epoch[0]) * self.batch[1] + (self.batch[1] - self.batch[0])
        return per_batch * left

    def text(self) -> str:
        return render.train_status(self.run_id, state=self.state, epochs=self.epochs, stage=self.stage,
                                   batch=self.batch, epoch=self.epoch, eta=self.eta(), position=self.position,
                                   recipe=self.recipe)


class Training(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        bot.queue = TrainQueue(self._run_job, slots=bot.settings.train_slots,
                               cap_per_guild=bot.settings.max_queue_per_guild, on_position=self._moved)

    async def _follow_slots(self) -> None:
        """Training slots follow what the trainer says it can run at once (with a GPU cluster, one job per GPU of
        the workers connected now). Looked at when a run is queued and when one ends: no timer, so a cluster
        that is down costs nothing meanwhile."""
        describe = getattr(self.bot.trainer, "describe", None)
        if describe is None:
            return
        try:
            info = await asyncio.wait_for(asyncio.to_thread(describe), 15.0)
        except asyncio.TimeoutError:
            return
        slots = info.get("slots")
        if slots and slots != self.bot.queue.slots:
            log.info("the trainer runs %d job(s) at once; training slots follow", slots)
            self.bot.queue.set_slots(slots)

    # ---------------------------------------------------------- commands

    @app_commands.command(name="train", description="Train a classifier on the workshop's images")
    @app_commands.describe(arch="Model architecture", epochs="Epochs after the first (frozen) one",
                           size="Image size in pixels")
    @app_commands.choices(arch=[app_commands.Choice(name=a, value=a) for a in ARCHS])
    @app_commands.guild_only()
    @host_only()
    async def train_cmd(self, interaction: discord.Interaction, arch: Optional[str] = None,
                        epochs: Optional[app_commands.Range[int, 1, 100]] = None,
                        size: Optional[app_commands.Range[int, 64, 512]] = None) -> None:
        ws = await workshop_here(interaction)
        await self._queue(interaction, ws, self.params_for(arch, epochs, size), parent=None)

    def params_for(self, arch: Optional[str], epochs: Optional[int], size: Optional[int]) -> RunParams:
        """A /train's options, else the settings' defaults; what neither fixes, the automatic recipe chooses in the
        job, where the device is known (imgcls.recipe)."""
        s = self.bot.settings
        arch = arch or (s.default_arch if s.default_arch != "auto" else None)
        epochs, size = epochs or s.default_epochs or None, size or s.default_size or None
        auto = tuple(name for name, value in (("arch", arch), ("size", size), ("epochs", epochs)) if value is None)
        plain = RunParams()
        return RunParams(arch=arch or plain.arch, epochs=epochs or plain.epochs, size=size or plain.size,
                         suspects=s.suspect_method, auto=auto, budget=s.train_budget, max_epochs=s.max_epochs)

    @app_commands.command(name="retrain", description="Train again on the cleaned data and compare with before")
    @app_commands.describe(arch="Try another backbone (default: the same recipe as before)",
                           epochs="Try other epochs after the first (frozen) one", size="Try another image size")
    @app_commands.choices(arch=[app_commands.Choice(name=a, value=a) for a in ARCHS])
    @app_commands.guild_only()
    @host_only()
    async def retrain(self, interaction: discord.Interaction, arch: Optional[str] = None,
                      epochs: Optional[app_commands.Range[int, 1, 100]] = None,
                      size: Optional[app_commands.Range[int, 64, 512]] = None) -> None:
        ws = await workshop_here(interaction)
        before = await self.bot.db(self.bot.store.latest_run, ws["id"])
        params = RunParams(**{k: v for k, v in (before["params"] or {}).items() if k in RunParams.__dataclass_fields__})
        # the same recipe as the run before (the automatic one's choices included), so before/after shows the
        # cleaning; what a host changes shows up in it too, on the same validation images
        changed = {k: v for k, v in (("arch", arch), ("epochs", epochs), ("size", size)) if v}
        params = replace(params, suspects=self.bot.settings.suspect_method, auto=(), **changed)
        await self._queue(interaction, ws, params, parent=before)

    async def _queue(self, interaction: discord.Interaction, ws: dict, params: RunParams,
                     parent: Optional[dict]) -> None:
        check_epochs(params, self.bot.settings.max_epochs)
        queue = self.bot.queue
        queue.check(interaction.guild_id, ws["id"])  # before a run is created for nothing
        self.bot.spawn(self._follow_slots(), name="follow-slots")  # in the background: the interaction first
        run_id, spec = await self.bot.db(prepare_run, self.bot.store, ws["id"], params,
                                         requested_by=str(interaction.user.id),
                                         parent_run_id=parent["id"] if parent else None,
                                         channel_id=interaction.channel_id)
        warm_soon = getattr(self.bot.trainer, "warm_soon", None)
        if warm_soon is not None:  # a local trainer warms its process now (torch, fastai), while the run queues
            self.bot.spawn(asyncio.to_thread(warm_soon), name="warm-trainer")
        payload = {"spec": spec, "channel": interaction.channel, "requester": interaction.user.id,
                   "parent": parent, "ready": asyncio.Event(), "view": RunView(run_id)}
        job = Job(run_id, interaction.guild_id, ws["id"], payload)
        try:
            position = queue.submit(job)
        except ConflictError:
            await self.bot.db(self.bot.store.mark_run, run_id, "cancelled", error="the queue was full")
            raise
        view = payload["view"]
        view.position = position or None
        try:  # whatever happens to these messages, the job must not wait for them forever
            what = "Retraining on the cleaned data" if parent else "Training"
            where = "starting now" if position == 0 else f"queued at position {position}"
            await interaction.response.send_message(
                f"{what}: run {run_id} ({render.recipe_brief(params)}, {len(spec.items)} images) is {where}. "
                "Progress below.")
            message = await interaction.channel.send(view.text())
            payload["message"] = message
            await self.bot.db(self.bot.store.set_run_message, run_id, message.id)
        finally:
            payload["ready"].set()

    async def _moved(self, job: Job) -> None:
        """A waiting run's position changed: show it."""
        await job.payload["ready"].wait()
        view, message = job.payload["view"], job.payload.get("message")
        if job.position and message is not None:
            view.position = job.position
            await message.edit(content=view.text())

    # ---------------------------------------------------------- the job

    async def _run_job(self, job: Job) -> None:
        p = job.payload
        await p["ready"].wait()
        view: RunView = p["view"]
        view.position, view.state = None, "starting"
        message = p.get("message")
        store, loop = self.bot.store, asyncio.get_running_loop()
        await self.bot.db(store.mark_run, job.run_id, "running")
        events: asyncio.Queue = asyncio.Queue()
        future = self.bot.trainer.submit(train, p["spec"], timeout=self.bot.settings.train_timeout,
                                         progress=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        done = asyncio.wrap_future(future)
        # the outcome is read from `future` (record_outcome); mark the wrapper's copy of it as read, so a failed,
        # timed-out or cancelled job is never logged as "Future exception was never retrieved"
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        await self._edit(message, view.text())
        last = 0.0
        getter: Optional[asyncio.Future] = None
        try:
            while not done.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                for event in [getter.result()] + [events.get_nowait() for _ in range(events.qsize())]:
                    view.update(event)
                    if event.kind == "notice":  # news for the channel, e.g. a GPU worker lost and a retry
                        await self._say(p["channel"], f"Run {job.run_id}: {event.message}.")
                if time.monotonic() - last >= self.bot.settings.progress_interval:
                    last = time.monotonic()
                    await self._edit(message, view.text())
        except asyncio.CancelledError:
            future.cancel()  # stops the worker process; the run stays 'running' and is announced after a restart
            done.cancel()
            if getter is not None:
                getter.cancel()
            raise
        while not events.empty():
            view.update(events.get_nowait())
        run = await self.bot.db(record_outcome, store, job.run_id, future)
        await self._finish(job, run, view, message)
        self.bot.spawn(self._follow_slots(), name="follow-slots")

    async def _say(self, channel: Any, text: str) -> None:
        try:
            await channel.send(text)
        except discord.HTTPException as exc:
            log.warning("could not post to the channel: %s", exc)

    async def _edit(self, message: Optional[discord.Message], text: str) -> None:
        if message is None:
            return
        try:
            await message.edit(content=text)
        except discord.HTTPException as exc:
            log.warning("run status edit failed: %s", exc)

    async def _finish(self, job: Job, run: dict, view: RunView, message: Optional[discord.Message]) -> None:
        channel, mention = job.payload["channel"], f"<@{job.payload['requester']}>"
        if run["status"] != "done":
            view.state = run["status"]
            await self._edit(message, view.text())
            await channel.send(render.clip(f"{mention} run {run['id']} {run['status']}: "
                                           f"{render.plain((run['error'] or 'no reason given')[:500])}"),
                               allowed_mentions=self._only(job.payload["requester"]))
            return
        view.state, view.stage, view.epoch = f"done, {render.right_of(run['metrics'])}", "", (0, 0)
        await self._edit(message, view.text())
        await self.post_results(channel, run, mention=mention, requester=job.payload["requester"])
        parent = job.payload.get("parent")
        if parent:
            await self._post_before_after(channel, parent, run)
        # a /train after the group cleaned counts as retraining too
        cleaned = "clean" in (await self.bot.db(self.bot.store.workshop, run["workshop_id"]))["settings"].get("done", [])
        self.bot.step_done(run["workshop_id"], "retrain" if parent or cleaned else "train", channel)
        closed = await self.bot.db(self.bot.stumpers.close_older, run["workshop_id"], run["id"])
        classify = self.bot.get_cog("Classify")  # answers from the older model stop taking votes
        if closed and classify is not None:
            await classify.closed(closed, f"run {run['id']}'s model answers now; paste the image again to try it.")

    async def _post_before_after(self, channel: Any, parent: dict, run: dict) -> None:
        """Both confusion matrices side by side in one image: over the same images when the job scored the old
        model on them, else each run's own."""
        changes = await self.bot.db(self.bot.board.changes_since, run["workshop_id"], parent["created_at"])
        diff = compare_runs(parent, run)
        left = (self._bytes(run, "before_confusion") if diff else None) or self._bytes(parent, "confusion")
        right = self._bytes(run, "confusion")
        name, files = f"before-after-run{run['id']}.png", []
        if left and right:
            captions = (f"Before: run {parent['id']}", f"After cleaning: run {run['id']}")
            files = [discord.File(io.BytesIO(await self.bot.in_pool(side_by_side, left, right, captions)), name)]
        shown = embeds.before_after(parent, run, changes, diff, image=name if files else "")
        await channel.send(embeds=as_embeds(shown), files=files)

    def _bytes(self, run: dict, key: str) -> Optional[bytes]:
        path = (run.get("artefacts") or {}).get(key)
        if not path or not Path(path).is_file():
            return None
        return Path(path).read_bytes()

    @staticmethod
    def _only(user_id: int) -> discord.AllowedMentions:
        """Ping the one person the bot means to tell, and nobody else: no @everyone, no roles."""
        return discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                       users=[discord.Object(int(user_id))])

    def _result_files(self, run: dict) -> tuple[list[discord.File], dict[str, str]]:
        """The run's pictures as files, and {artefact: attachment name} for the embeds that show them."""
        files, names = [], {}
        for key, suffix in RESULT_PICTURES:
            data = self._bytes(run, key)
            if data:
                names[key] = f"run{run['id']}-{suffix}.png"
                files.append(discord.File(io.BytesIO(data), names[key]))
        return files, names

    async def post_results(self, channel: Any, run: dict, mention: str = "", requester: Optional[int] = None) -> None:
        files, names = self._result_files(run)
        await channel.send(f"{mention} run {run['id']} finished." if mention else None,
                           embeds=as_embeds(await self._results_embeds(run, names)), files=files,
                           allowed_mentions=self._only(requester) if requester else discord.AllowedMentions.none())

    async def _results_embeds(self, run: dict, names: dict[str, str]) -> list[dict]:
        suspects = await self.bot.db(self.bot.suspects.ranking, run["id"])
        return embeds.run_results(run, suspects=render.suspects_line(run, len(suspects)), files=names)

    async def recover(self) -> None:
        """Runs a restart interrupted are marked and announced in their channel."""
        for run in self.bot.interrupted_runs:
            try:
                ws = await self.bot.db(self.bot.store.workshop, run["workshop_id"])
                channel = self.bot.get_channel(run["channel_id"] or ws["channel_id"])
                if channel is None:
                    continue
                if run.get("message_id"):  # its status message still shows the epoch and the ETA it stopped at
                    try:
                        await channel.get_partial_message(run["message_id"]).edit(content=render.clip(
                            f"**Run {run['id']}** — interrupted: the bot restarted before it finished. "
                            "A host can start it again with `/train`."))
                    except discord.HTTPException as exc:
                        log.warning("could not mark run %s's status message: %s", run["id"], exc)
                await channel.send(f"Run {run['id']} was interrupted when the bot restarted; "
                                   "a host can start it again with `/train`.")
            except Exception:
                log.exception("could not announce interrupted run %s", run["id"])

    # ---------------------------------------------------------- results, history, export

    @app_commands.command(name="results", description="Post a run's results again (default: the latest)")
    @app_commands.guild_only()
    async def results(self, interaction: discord.Interaction, run: Optional[int] = None) -> None:
        row = await self._run_here(interaction, run)
        await interaction.response.defer(thinking=True)
        files, names = self._result_files(row)
        await interaction.followup.send(embeds=as_embeds(await self._results_embeds(row, names)), files=files)
        self.bot.step_done(row["workshop_id"], "learn", interaction.channel)

    async def _run_here(self, interaction: discord.Interaction, run_id: Optional[int]) -> dict:
        ws = await workshop_here(interaction)
        if run_id is None:
            return await self.bot.db(self.bot.store.latest_run, ws["id"])
        try:
            row = await self.bot.db(self.bot.store.run, run_id)
        except NotFound:
            row = None
        if row is None or row["workshop_id"] != ws["id"]:
            raise NotFound(f"This workshop has no run {run_id}; `/runs` lists them.")
        if row["status"] != "done":
            raise NotFound(f"Run {run_id} is {row['status']}" + (f": {row['error']}" if row["error"] else "") + ".")
        return row

    @app_commands.command(name="runs", description="The workshop's training runs")
    @app_commands.guild_only()
    async def runs(self, interaction: discord.Interaction) -> None:
        ws = await workshop_here(interaction)
        rows = await self.bot.db(self.bot.store.runs, ws["id"])
        names = {str(r["requested_by"]): f"<@{r['requested_by']}>" for r in rows if r.get("requested_by")}
        await interaction.response.send_message(render.runs_list(rows, names),
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="export", description="Download the latest trained model (a fastai export)")
    @app_commands.guild_only()
    @host_only()
    async def export(self, interaction: discord.Interaction, run: Optional[int] = None) -> None:
        row = await self._run_here(interaction, run)
        path = Path(row["model_path"] or "")
        size = path.stat().st_size if path.is_file() else 0
        if not size:
            raise NotFound(f"Run {row['id']}'s model file is missing; retrain to make a new one.")
        limit = interaction.filesize_limit
        if size > limit:
            await interaction.response.send_message(
                f"Run {row['id']}'s model is {size / 1e6:.1f} MB, over this server's {limit / 1e6:.0f} MB upload "
                f"limit, so I can't attach it. It is on the bot's host at `runs/{row['id']}/model.pkl` "
                f"(sha256 `{row['model_sha256'][:16]}…`).", ephemeral=True)
            return
        # checked on the very bytes that would go out, before anything is posted (a refusal stays private)
        data, digest = await asyncio.get_running_loop().run_in_executor(None, _read_and_hash, path)
        if digest != row["model_sha256"]:
            log.warning("run %s's model file no longer matches its recorded sha256", row["id"])
            raise ModelRefused(f"Run {row['id']}'s model file has changed since it was trained, so I won't share "
                               "it; retrain to make a new one.")
        await interaction.response.defer(thinking=True)
        await interaction.followup.send(
            f"Run {row['id']}'s model ({size / 1e6:.1f} MB; load it with fastai's `load_learner`; "
            f"sha256 `{row['model_sha256']}`).", file=discord.File(io.BytesIO(data), f"run{row['id']}-model.pkl"))


def check_epochs(params: RunParams, max_epochs: int) -> None:
    """Refuse epochs over MAX_EPOCHS; epochs the automatic recipe chooses keep to it by themselves."""
    if "epochs" not in params.auto and params.epochs > max_epochs:
        raise InvalidInput(f"This bot allows at most {max_epochs} epochs.")


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


async def setup(bot) -> None:
    await bot.add_cog(Training(bot))
