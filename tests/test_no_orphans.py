"""Every worker process the project starts exits within seconds of its parent dying, kill -9 included:
the bot's ingest pool, prediction worker and spare training worker, and the CLI's ingest pool."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.procs import alive, descendants

ROOT = Path(__file__).resolve().parents[1]
MANAGE_GUILD = 1 << 5


children = descendants  # every live descendant of a pid


def wait_for_children(pid: int, at_least: int, timeout: float = 120) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(pid)
        if len(found) >= at_least:
            return found
        time.sleep(0.02)
    raise AssertionError(f"process {pid} started only {len(children(pid))} children")


def assert_all_exit(pids: set[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(pids)
    for pid in left:  # tidy up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} worker processes outlived their parent by {within:g} s"


def big_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2400, 3200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_the_cli_ingest_pool_dies_with_the_cli(tmp_path):
    data = big_jpeg()
    for label in ("cats", "dogs"):
        folder = tmp_path / "photos" / label
        folder.mkdir(parents=True)
        for i in range(40):  # the same pixels, but each file is decoded and checked in full
            (folder / f"{i:03d}.jpg").write_bytes(data + bytes([i]))
    exe = [sys.executable, "-m", "imgcls.cli", "--data-dir", str(tmp_path / "data")]
    subprocess.run(exe + ["init", "pets", "--labels", "cats, dogs"], check=True, cwd=ROOT, capture_output=True)
    cli = subprocess.Popen(exe + ["add-folder", "pets", str(tmp_path / "photos"), "--jobs", "2"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = wait_for_children(cli.pid, 2)
        time.sleep(0.5)
        workers |= children(cli.pid)  # the pool's resource tracker, if it is up by now
        assert cli.poll() is None, "the ingest finished before the test could kill it"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(10)
        assert_all_exit(workers)
    finally:
        if cli.poll() is None:
            cli.kill()


async def test_the_bots_workers_die_with_the_bot(tmp_path):
    fake = FakeDiscord()
    guild = fake.add_guild("School")
    chan = fake.add_channel(guild, "workshop")
    host = fake.add_user("host")
    fake.add_member(guild, host, permissions=MANAGE_GUILD)
    async with fake:
        env = {**os.environ, "DISCORD_TOKEN": fake.token, "DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING",
               "FAKE_DISCORD_API": fake.base_url, "FAKE_DISCORD_GATEWAY": fake.gateway_url, "PYTHONUNBUFFERED": "1"}
        bot = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_bot"], cwd=tmp_path, env={
            **env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await fake.wait_ready(120)
            await fake.wait_for(lambda: fake.commands.get(None), 60)
            ix = await fake.slash(host, chan, "workshop start", {"name": "Pets", "labels": "cats, dogs"})
            await ix.wait_response(60)
            ix = await fake.slash(host, chan, "images add", {"label": "cats"},
                                  attachments=[("cat.jpg", big_jpeg(), "image/jpeg")])
            await ix.wait_message(lambda m: "cat.jpg" in m.content, 120)  # the ingest pool has a worker now
            # the prediction worker, an ingest worker, the resource tracker (a warm training worker only once a
            # run is queued)
            workers = await asyncio.to_thread(wait_for_children, bot.pid, 3)
            os.kill(bot.pid, signal.SIGKILL)
            await asyncio.to_thread(bot.wait, 10)
            await asyncio.to_thread(assert_all_exit, workers)
        finally:
            if bot.poll() is None:
                bot.kill()
