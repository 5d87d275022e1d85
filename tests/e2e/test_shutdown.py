"""Stopping the bot (what SIGTERM does) while a run trains: the job is stopped and nothing is left for asyncio to
complain about ("Future exception was never retrieved")."""
from __future__ import annotations

import asyncio
import gc
import logging

from bot.bot import WorkshopBot
from bot.settings import Settings
from imgcls.collect import add_files, folder_files
from imgcls.store import Store
from tests.conftest import write_image_folders
from tests.fakes.discord_server import FakeDiscord

MANAGE_GUILD = 1 << 5
LABELS = ["circles", "squares", "triangles"]


async def test_stopping_during_training_leaves_no_unretrieved_job_error(tmp_path, caplog):
    fake = FakeDiscord()
    guild = fake.add_guild("School")
    chan = fake.add_channel(guild, "workshop")
    host = fake.add_user("host")
    fake.add_member(guild, host, permissions=MANAGE_GUILD)
    settings = Settings(discord_token=fake.token, data_dir=str(tmp_path / "data"), default_arch="lite0",
                        default_size=64, progress_interval=0, train_timeout=600, suspect_method="none")
    bot = WorkshopBot(settings)
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with fake:
        with fake.discord_urls():
            runner = asyncio.create_task(bot.start(fake.token))
            try:
                await fake.wait_ready(60)
                await fake.wait_for(lambda: fake.commands.get(None), 60)
                ix = await fake.slash(host, chan, "workshop start", {"name": "Shapes", "labels": ", ".join(LABELS)})
                await ix.wait_response(60)
                store = Store(settings.data_dir)
                [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
                photos = write_image_folders(tmp_path / "photos", per_label=10, size=64)
                add_files(store, ws["id"], folder_files(photos, LABELS))
                ix = await fake.slash(host, chan, "train", {"epochs": 20, "size": 64})
                await ix.wait_response(60)
                await fake.wait_for(lambda: any(m.content.startswith("**Run 1**") and "epoch 2/" in m.content
                                                for m in fake.messages(chan)), 300)
            finally:
                await bot.close()
                await asyncio.gather(runner, return_exceptions=True)
            await asyncio.sleep(0.5)  # let the stopped job's outcome reach the loop
            del bot, runner  # what a process exiting does: everything the run's task held is freed
            gc.collect()
            await asyncio.sleep(0)
    assert store.run(1)["status"] == "running"  # recorded as it was: announced as interrupted after a restart
    store.close()
    complaints = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert complaints == []
