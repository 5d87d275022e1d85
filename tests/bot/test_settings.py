"""Settings: .env and the environment, checked with messages that say what to fix; documented in .env.example."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_documents_every_setting_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M)) - {"TORCH_HOME"}
    assert documented == {f.name.upper() for f in fields(Settings)}
    lines = text.splitlines()
    for name in documented:  # each sits in a block of settings that a comment explains
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{name}="))
        while re.match(r"[A-Z_]+=", lines[i - 1]):
            i -= 1
        assert lines[i - 1].startswith("#"), name


def test_env_file_then_environment(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# comment\nDISCORD_TOKEN='abc'\nVOTE_QUORUM=3\nMESSAGE_CONTENT_INTENT=yes\nDEV_GUILD_ID=\n")
    s = load_settings({"VOTE_QUORUM": "4"}, env_file=env)
    assert (s.discord_token, s.vote_quorum, s.message_content_intent, s.dev_guild_id) == ("abc", 4, True, None)
    assert "abc" not in repr(s)


@pytest.mark.parametrize("env, needle", [
    ({"VOTE_QUORUM": "two"}, "VOTE_QUORUM"),
    ({"DEFAULT_ARCH": "vgg"}, "DEFAULT_ARCH"),
    ({"DOWNLOAD_SOURCES": "google"}, "google"),
    ({"MAX_LABELS": "0"}, "MAX_LABELS"),
    ({"MESSAGE_CONTENT_INTENT": "maybe"}, "MESSAGE_CONTENT_INTENT"),
    ({"GUIDE_FILE": "/nonexistent/guide.toml"}, "GUIDE_FILE: The guide file /nonexistent/guide.toml could not be read"),
])
def test_bad_settings_are_refused_with_the_name(env, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(env, env_file=None)


def test_without_a_token_the_bot_explains_how_to_make_one_and_exits_non_zero(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    for needle in ("DISCORD_TOKEN", "applications.commands", "Send Messages", "Embed Links", "Attach Files", "Add Reactions",
                   "Read Message History"):
        assert needle in proc.stderr
