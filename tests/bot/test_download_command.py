"""/images download under SimCord against the fake search API and image server: one progress
message edited in place, and a download a restart interrupted resumes without refetching."""
from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from imgcls.store import Store
from tests.fakes.threaded import running_servers

from .conftest import make_bot

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def search():
    with running_servers() as servers:
        yield servers


@pytest.fixture
def settings(settings, search):
    return replace(settings, openverse_url=search.search, download_sources="openverse", download_allow="127.0.0.1",
                   max_images_per_label=10)


async def test_download_shows_progress_and_a_restart_resumes_it(world, settings, workers, search):
    ch = world.channel
    await world.host.slash(ch, "workshop start", name="Flowers", labels="sunflowers, lavender")
    too_many = await world.host.slash(ch, "images download", per_label=50)
    assert too_many.ephemeral and "at most 10 images per label" in too_many.response.content
    refused = await world.alice.slash(ch, "images download", per_label=3)
    assert refused.ephemeral and "Only the workshop host" in refused.response.content
    bad = await world.host.slash(ch, "images download", per_label=3, sources="google")
    assert bad.ephemeral and "Unknown image source" in bad.response.content

    ok = await world.host.slash(ch, "images download", per_label=3)
    assert "Downloading up to 3 images per label from openverse" in ok.response.content
    progress = [m for m in ch.history() if m.content.startswith("**Download")]
    assert len(progress) == 1  # one message, edited in place
    assert "**Download finished**" in progress[0].content and progress[0].content.count("3/3") == 2
    assert progress[0].edited_at is not None

    # a download left running by a bot that died: the next start resumes it
    store = Store(settings.data_dir)
    ws = store.find_workshop(guild_id=world.guild.id, channel_id=ch.id)
    download_id = store.start_download(ws["id"], 5, ["openverse"], requested_by=str(world.host.id), channel_id=ch.id)
    store.db.conn.execute("UPDATE downloads SET owner = ? WHERE id = ?", [f"{socket.gethostname()}:999999", download_id])
    await world.env.restart_bot(make_bot(settings, workers))
    await world.env.bot.recovered.wait()
    await world.env.settle()
    resumed = [m for m in ch.history() if "Resumed after a restart" in m.content]
    assert len(resumed) == 1 and "**Download finished**" in resumed[0].content
    assert resumed[0].content.count("5/5") == 2
    assert store.download(download_id)["status"] == "done"
    assert store.counts(ws["id"]) == {"sunflowers": 5, "lavender": 5}
    assert search.stats.total >= 10 and set(search.stats.requests.values()) == {1}  # nothing fetched twice
    store.close()
