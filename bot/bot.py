"""The Bot: creates the store, executors and HTTP session once, loads the extensions, recovers after a restart.

Everything blocking runs elsewhere: the store on one database thread (one writer), ingest
and plots in a process pool, training in a fresh process per job, prediction in one
persistent process that keeps the model cached.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Awaitable, Callable, Optional, TypeVar

import aiohttp
import discord
from discord.ext import commands

from imgcls.cleaning import CleaningBoard
from imgcls.download import DownloadConfig, make_session
from imgcls.search import SearchConfig
from imgcls.store import Store
from imgcls.stumpers import StumperBook
from imgcls.suspects import SuspectBook

from .guide import Guide, load_guide

from .queue import TrainQueue
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTENSIONS = ("bot.exts.errors", "bot.exts.workshop", "bot.exts.images", "bot.exts.training",
              "bot.exts.cleaning", "bot.exts.classify", "bot.exts.guide")


def make_trainer(settings: Settings) -> Any:
    """The training executor the settings ask for: local worker processes, or a Dask cluster's GPU workers
    (then this host starts no training worker and never imports torch for training)."""
    if settings.executor == "dask":
        from imgcls.dask_jobs import DaskJobExecutor

        return DaskJobExecutor.from_settings(settings.dask_scheduler, tls_ca_file=settings.dask_tls_ca_file,
                                             tls_cert=settings.dask_tls_cert, tls_key=settings.dask_tls_key)
    from imgcls.jobs import ProcessJobExecutor
    from imgcls.train import warm_up

    return ProcessJobExecutor(settings.train_slots, warm=warm_up, keep_warm=settings.train_keep_warm)


def intents_for(settings: Settings) -> discord.Intents:
    """Guilds and reactions; members and message content only when the privileged setting is on."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True  # mentions with images (content arrives for mentions without the intent)
    intents.guild_reactions = True
    intents.message_content = settings.message_content_intent
    return intents


class WorkshopBot(commands.Bot):
    """The workshop bot. Pass your own executors or session (tests do); the rest is made in setup_hook."""

    def __init__(self, settings: Settings, *, trainer: Optional[Any] = None, pool: Optional[Executor] = None,
                 predict_pool: Optional[Executor] = None,
                 session_factory: Optional[Callable[[], aiohttp.ClientSession]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("intents", intents_for(settings))
        # Nobody is pinged unless a message names them on purpose (the requester of a run): user-supplied
        # text such as a label "@everyone" can never reach the whole server.
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, **kwargs)
        self.settings = settings
        self.trainer = trainer
        self.pool = pool
        self.predict_pool = predict_pool
        self._session_factory = session_factory
        self._own: list[Any] = []  # executors this bot created and must shut down
        self._background: set[asyncio.Task] = set()
        self.db_executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.store: Store
        self.board: CleaningBoard
        self.suspects: SuspectBook
        self.stumpers: StumperBook
        self.guide: Guide = load_guide(settings.guide_file or None)
        self.session: aiohttp.ClientSession
        self.queue: TrainQueue
        self.recovered = asyncio.Event()
        self.closing = False
        self.interrupted_runs: list[dict] = []
        self.interrupted_downloads: list[dict] = []

    # ---------------------------------------------------------- configuration for imgcls

    @property
    def download_config(self) -> DownloadConfig:
        allow = tuple(a.strip() for a in self.settings.download_allow.split(",") if a.strip())
        return replace(DownloadConfig(), allow=allow)

    @property
    def search_config(self) -> SearchConfig:
        s = self.settings
        return SearchConfig(openverse_url=s.openverse_url, wikimedia_url=s.wikimedia_url,
                            allow=self.download_config.allow,
                            openverse_client_id=s.openverse_client_id or None,
                            openverse_client_secret=s.openverse_client_secret or None)

    # ---------------------------------------------------------- start-up

    async def setup_hook(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.store = await self.db(Store, self.settings.data_dir)
        self.board = await self.db(CleaningBoard, self.store)
        self.suspects = await self.db(SuspectBook, self.store, self.board)
        self.stumpers = await self.db(StumperBook, self.store, self.board)
        if self.pool is None:
            from imgcls.jobs import worker_init

            self.pool = ProcessPoolExecutor(2, mp_context=spawn, initializer=worker_init, initargs=(os.getpid(),))
            self._own.append(self.pool)
        if self.predict_pool is None:
            from imgcls.predict import warm_up_worker

            self.predict_pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=warm_up_worker,
                                                    initargs=(os.getpid(),))
            self._own.append(self.predict_pool)
            self.predict_pool.submit(int)  # start the worker (and its warm-up) now
        if self.trainer is None:
            self.trainer = make_trainer(self.settings)
            self._own.append(self.trainer)
        self.session = self._session_factory() if self._session_factory else make_session(self.download_config)
        # What an earlier process left unfinished, taken before this one can start anything of its own.
        self.interrupted_runs = await self.db(self.store.interrupted_runs)
        self.interrupted_downloads = await self.db(self.store.interrupted_downloads)
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        await self.sync_commands()
        self.spawn(self._recover(), name="recover")

    async def sync_commands(self) -> None:
        if self.settings.host_role.strip():
            # Discord's default permissions would hide host commands from the host role's members:
            # with a host role, visibility is left to the server and the run-time check decides.
            for cmd in self.tree.get_commands():
                if getattr(cmd, "default_permissions", None) is not None:
                    cmd.default_permissions = None
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to the dev guild %s", len(synced), self.settings.dev_guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d commands globally (they can take a while to appear)", len(synced))

    async def _recover(self) -> None:
        """After a restart: announce interrupted runs, recount open votes, resume downloads."""
        await self.wait_until_ready()
        try:
            for name in ("training", "cleaning", "images", "classify"):
                cog = self.get_cog(name.capitalize())
                if cog is not None and hasattr(cog, "recover"):
                    try:
                        await cog.recover()
                    except Exception:
                        log.exception("recovering %s after a restart failed", name)
        finally:
            self.recovered.set()

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the extensions' listeners handle messages."""

    # ---------------------------------------------------------- helpers for the extensions

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the database thread (one writer, never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db_executor, functools.partial(fn, *args, **kwargs))

    async def in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """CPU work (ingest, plots) in the process pool; `fn` must be importable by name."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def step_done(self, workshop_id: int, event: str, channel: Any) -> None:
        """Tell the guide that something happened in a workshop (a download finished, a run trained…); it posts the
        next step in the background when that finishes one."""
        cog = self.get_cog("Guide")
        if cog is not None and channel is not None:
            self.spawn(cog.step_done(workshop_id, event, channel), name=f"guide-{event}")

    def spawn(self, coro: Awaitable[Any], *, name: str) -> asyncio.Task:
        """A background task that is kept alive, logged if it fails and cancelled on close."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ---------------------------------------------------------- shutdown

    async def close(self) -> None:
        """Stop cleanly: no new work, background tasks cancelled (state is in the store), executors stopped."""
        log.info("shutting down")
        self.closing = True
        queue = getattr(self, "queue", None)
        if queue is not None:
            await queue.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await super().close()
        finally:
            session = getattr(self, "session", None)
            if session is not None and not session.closed:
                await session.close()
            loop = asyncio.get_running_loop()
            for ex in self._own:
                await loop.run_in_executor(None, functools.partial(_shutdown, ex))
            store = getattr(self, "store", None)
            if store is not None:
                await loop.run_in_executor(self.db_executor, store.close)
            self.db_executor.shutdown(wait=True)


def _shutdown(executor: Any) -> None:
    try:
        executor.shutdown(wait=True, cancel_futures=True)
    except Exception:
        log.exception("stopping %r failed", executor)
