"""The bot under SimCord (a simulated Discord in memory), with the real imgcls store, ingest, training
and prediction. Worker processes are started once per session and injected, as the bot's own
setup_hook would create them."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.bot import WorkshopBot
from bot.settings import Settings
from imgcls.collect import add_files, folder_files
from imgcls.jobs import ProcessJobExecutor
from imgcls.predict import warm_up_worker
from imgcls.store import Store
from imgcls.types import ImageMeta

from ..conftest import jpeg_bytes, make_image, write_image_folders

LABELS = ["circles", "squares", "triangles"]


@pytest.fixture(scope="session")
def workers():
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(2, mp_context=spawn)
    predict_pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=warm_up_worker)
    trainer = ProcessJobExecutor(1)
    yield {"pool": pool, "predict_pool": predict_pool, "trainer": trainer}
    trainer.shutdown(cancel_futures=True)
    pool.shutdown(cancel_futures=True)
    predict_pool.shutdown(cancel_futures=True)


@pytest.fixture
def settings(tmp_path, request) -> Settings:
    """Test settings; `@pytest.mark.parametrize("settings", [{...}], indirect=True)` changes some."""
    base = Settings(discord_token="test-token", data_dir=str(tmp_path / "data"), default_arch="lite0",
                    default_size=64, default_epochs=1, progress_interval=0, reaction_pace=0, host_role="Hosts",
                    clean_count=3, vote_quorum=2, train_timeout=300)
    return replace(base, **getattr(request, "param", {}))


_bots: list[WorkshopBot] = []


def make_bot(settings: Settings, workers: dict) -> WorkshopBot:
    bot = WorkshopBot(settings, **workers)
    _bots.append(bot)
    return bot


@pytest.fixture
def simcord_bot(settings, workers):
    return make_bot(settings, workers)


@dataclass
class World:
    env: Any
    guild: Any
    channel: Any
    other_channel: Any
    host: Any  # Manage Server
    helper: Any  # the host role from the settings
    alice: Any
    bob: Any
    carol: Any


@pytest.fixture
async def world(simcord_env):
    env = simcord_env
    guild = env.create_guild("School")
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    hosts = guild.create_role("Hosts")
    yield World(env, guild, guild.create_text_channel("workshop"), guild.create_text_channel("other"),
                 guild.add_member(env.create_user("host"), roles=[admins]),
                 guild.add_member(env.create_user("helper"), roles=[hosts]),
                 guild.add_member(env.create_user("alice")), guild.add_member(env.create_user("bob")),
                 guild.add_member(env.create_user("carol")))
    while _bots:  # the simulated shutdown does not close the bots' HTTP sessions
        session = getattr(_bots.pop(), "session", None)
        if session is not None:
            await session.close()


def seed_images(settings: Settings, tmp_path: Path, workshop_name: str, per_label: int = 8, size: int = 64) -> None:
    """Images for a workshop the bot started, added through imgcls as `imgcls add-folder` would."""
    photos = write_image_folders(tmp_path / "photos", per_label=per_label, size=size)
    store = Store(settings.data_dir)
    try:
        [row] = store.db.query("SELECT id FROM workshops WHERE name = ? AND status = 'active'", [workshop_name])
        add_files(store, row["id"], folder_files(photos, LABELS), meta=ImageMeta(source="folder", added_by="seed"))
    finally:
        store.close()


def photo(kind: str = "circles", seed: int = 5000, size: int = 96) -> bytes:
    return jpeg_bytes(make_image(kind, seed, size))
