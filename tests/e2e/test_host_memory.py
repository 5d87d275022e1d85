"""The bot host's memory, measured on the real bot process (`python -m tests.fakes.run_bot`, as `make run` starts
it) and all its workers: idle after a run and a first prediction, the whole tree fits a small server."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from imgcls.collect import add_files, folder_files
from imgcls.store import Store
from tests.conftest import jpeg_bytes, make_image, shown, write_image_folders
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.procs import descendants

ROOT = Path(__file__).resolve().parents[2]
MANAGE_GUILD = 1 << 5
LABELS = ["circles", "squares", "triangles"]
GOAL_MB = 500


def tree(pid: int) -> dict[int, tuple[float, str]]:
    """pid -> (RSS in MB, command) for the process and all its descendants."""
    out = {}
    found = {pid} | descendants(pid)
    for p in found:
        try:
            rss = next(int(line.split()[1]) / 1024 for line in Path(f"/proc/{p}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:90]
        except (OSError, StopIteration):
            continue
        out[p] = (rss, cmd)
    return out


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


async def test_the_idle_bot_with_all_its_workers_fits_in_500_mb(tmp_path):
    fake = FakeDiscord()
    guild = fake.add_guild("School")
    chan = fake.add_channel(guild, "workshop")
    host = fake.add_user("host")
    fake.add_member(guild, host, permissions=MANAGE_GUILD)
    async with fake:
        env = {**os.environ, "DISCORD_TOKEN": fake.token, "DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING",
               "FAKE_DISCORD_API": fake.base_url, "FAKE_DISCORD_GATEWAY": fake.gateway_url, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(ROOT), "DEFAULT_ARCH": "lite0", "SUSPECT_METHOD": "none", "TRAIN_KEEP_WARM": "3",
               "PROGRESS_INTERVAL": "0"}
        bot = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_bot"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await fake.wait_ready(120)
            await fake.wait_for(lambda: fake.commands.get(None), 60)
            ix = await fake.slash(host, chan, "workshop start", {"name": "Shapes", "labels": ", ".join(LABELS)})
            await ix.wait_response(60)
            store = Store(tmp_path / "data")
            [ws] = store.db.query("SELECT id FROM workshops WHERE status = 'active'")
            add_files(store, ws["id"], folder_files(write_image_folders(tmp_path / "photos", per_label=8, size=64),
                                                    LABELS))
            store.close()
            ix = await fake.slash(host, chan, "images add", {"label": "circles"},
                                  attachments=[("one.jpg", jpeg_bytes(make_image("circles", 99, 128)), "image/jpeg")])
            await ix.wait_message(lambda m: "one.jpg" in m.content, 120)  # the ingest pool is up now, as after any
            ix = await fake.slash(host, chan, "train", {"epochs": 1, "size": 64})  # upload or download
            await ix.wait_response(60)
            await fake.wait_for(lambda: any("Run 1 finished" in shown(m) for m in fake.messages(chan)), 300)
            pasted = await fake.post_message(host, chan, f"{fake.bot_user.mention} what is this?",
                                             attachments=[("mystery.jpg", jpeg_bytes(make_image("circles", 4242)))])
            await fake.wait_for(lambda: any(m.reference and m.reference["message_id"] == str(pasted.id)
                                            for m in fake.messages(chan)), 120)
            await asyncio.sleep(6)  # idle: past TRAIN_KEEP_WARM, so the warm training process has gone
            processes = tree(bot.pid)
            torch_maps = {pid: "libtorch" in maps(pid) for pid in processes}
        finally:
            bot.terminate()
            await asyncio.to_thread(bot.wait, 30)
    total = sum(rss for rss, _ in processes.values())
    print(f"\nbot host idle after a run and a first prediction: {total:.0f} MB RSS in {len(processes)} processes")
    for pid, (rss, cmd) in sorted(processes.items(), key=lambda kv: -kv[1][0]):
        print(f"  {rss:6.0f} MB  {cmd}")
    assert not any(torch_maps.values()), f"a bot process has torch loaded: {torch_maps}"
    assert total <= GOAL_MB, processes
