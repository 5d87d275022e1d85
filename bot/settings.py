"""Settings: the only module that reads the environment (and `.env`).

Every field has an environment variable of the same name in capitals; `.env.example`
documents each one, and a test keeps the two in step.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional

from imgcls.types import ARCHS, SOURCES, SUSPECT_METHODS

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and what to do."""


@dataclass(frozen=True)
class Settings:
    discord_token: str = ""
    data_dir: str = "data"
    log_level: str = "INFO"
    default_arch: str = "auto"  # "auto": the automatic recipe chooses (imgcls.recipe)
    default_size: int = 0  # 0: the automatic recipe chooses
    default_epochs: int = 0  # 0: the automatic recipe chooses
    train_budget: float = 300.0  # seconds of fine_tune the automatic recipe aims to stay within
    host_role: str = ""
    dev_guild_id: Optional[int] = None
    message_content_intent: bool = False
    executor: str = "process"
    dask_scheduler: str = ""
    dask_tls_ca_file: str = ""
    dask_tls_cert: str = ""
    dask_tls_key: str = ""
    train_slots: int = 1
    train_keep_warm: float = 300.0  # seconds a warm training process waits after a run; 0: none is kept
    train_timeout: float = 3600.0
    max_images_per_label: int = 200
    max_labels: int = 20
    max_epochs: int = 20
    max_queue_per_guild: int = 3
    vote_quorum: int = 2
    clean_count: int = 6
    clean_thread_at: int = 5
    suspect_method: str = "auto"
    reaction_pace: float = 0.25
    confidence_threshold: float = 0.6
    progress_interval: float = 3.0
    download_sources: str = "openverse,wikimedia"
    download_allow: str = ""
    openverse_url: str = "https://api.openverse.org"
    wikimedia_url: str = "https://commons.wikimedia.org/w/api.php"
    openverse_client_id: str = ""
    openverse_client_secret: str = ""
    guide_file: str = ""  # the guided steps' texts (TOML); empty: bot/guide.toml

    def __repr__(self) -> str:  # never show the token, even in a traceback
        shown = ", ".join(f"{f.name}={'***' if 'token' in f.name or 'secret' in f.name else getattr(self, f.name)!r}"
                          for f in fields(self))
        return f"Settings({shown})"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; blank lines and # comments ignored; values may be quoted."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{n}: expected KEY=value.")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip().removeprefix("export ").strip()] = value
    return out


def _convert(name: str, kind: str, raw: str):
    raw = raw.strip()
    try:
        if kind in ("int", "Optional[int]"):
            return int(raw) if raw else None if kind.startswith("Optional") else 0
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {kind.replace('Optional[', '').rstrip(']')}.") from None
    return raw


def load_settings(environ: Optional[Mapping[str, str]] = None, env_file: Optional[Path] = Path(".env")) -> Settings:
    """Settings from `.env` overridden by the environment; checked, with errors that say what to fix."""
    values = read_env_file(env_file) if env_file else {}
    values.update(os.environ if environ is None else environ)
    kwargs = {}
    for f in fields(Settings):
        raw = values.get(f.name.upper())
        if raw is not None:
            kwargs[f.name] = _convert(f.name, str(f.type), raw)
    s = Settings(**kwargs)
    check(s)
    return s


def check(s: Settings) -> None:
    if s.default_arch not in (*ARCHS, "auto"):
        raise SettingsError(f"DEFAULT_ARCH must be auto (the automatic recipe chooses) or one of {', '.join(ARCHS)}.")
    if s.executor not in ("process", "dask"):
        raise SettingsError("EXECUTOR must be 'process' (training in a local worker process) or 'dask' (on the GPU "
                            "workers of a Dask scheduler, DASK_SCHEDULER).")
    if s.executor == "dask" and not s.dask_scheduler.strip():
        raise SettingsError("EXECUTOR=dask needs DASK_SCHEDULER, the scheduler's address, e.g. tcp://gpu-box:8786.")
    tls = [s.dask_tls_ca_file, s.dask_tls_cert, s.dask_tls_key]
    if any(tls) and not all(tls):
        raise SettingsError("For TLS to the Dask scheduler set all three of DASK_TLS_CA_FILE, DASK_TLS_CERT and "
                            "DASK_TLS_KEY.")
    bad = [x for x in s.download_sources.split(",") if x.strip() and x.strip() not in SOURCES]
    if bad:
        raise SettingsError(f"DOWNLOAD_SOURCES has unknown sources {', '.join(bad)}; choose from {', '.join(SOURCES)}.")
    for name in ("train_slots", "max_images_per_label", "max_labels", "max_epochs", "max_queue_per_guild",
                 "vote_quorum", "clean_count"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{name.upper()} must be at least 1.")
    if s.suspect_method not in SUSPECT_METHODS:
        raise SettingsError(f"SUSPECT_METHOD must be one of {', '.join(SUSPECT_METHODS)}.")
    if s.clean_thread_at < 0:
        raise SettingsError("CLEAN_THREAD_AT must be 0 or more.")
    if s.train_keep_warm < 0:
        raise SettingsError("TRAIN_KEEP_WARM must be 0 (keep no warm training process) or more seconds.")
    if s.default_size and not 64 <= s.default_size <= 512:
        raise SettingsError("DEFAULT_SIZE must be 0 (the automatic recipe chooses) or 64 to 512 pixels.")
    if s.default_epochs < 0 or s.default_epochs > s.max_epochs:
        raise SettingsError(f"DEFAULT_EPOCHS must be 0 (the automatic recipe chooses) or 1 to MAX_EPOCHS "
                            f"({s.max_epochs}).")
    if not 10 <= s.train_budget < s.train_timeout:
        raise SettingsError(f"TRAIN_BUDGET must be at least 10 seconds and under TRAIN_TIMEOUT ({s.train_timeout:g} s): "
                            "it is the training time the automatic recipe aims for.")
    if not 0 <= s.confidence_threshold <= 1:
        raise SettingsError("CONFIDENCE_THRESHOLD must be between 0 and 1.")
    if s.progress_interval < 0 or s.train_timeout <= 0:
        raise SettingsError("PROGRESS_INTERVAL must be >= 0 and TRAIN_TIMEOUT > 0 seconds.")
    if s.guide_file.strip():
        from imgcls.errors import InvalidInput

        from .guide import load_guide

        try:
            load_guide(s.guide_file)
        except InvalidInput as exc:
            raise SettingsError(f"GUIDE_FILE: {exc}") from None


TOKEN_HELP = """\
DISCORD_TOKEN is not set, so the bot cannot log in.

1. Open https://discord.com/developers/applications, choose "New Application", then "Bot",
   and "Reset Token" to copy the bot's token.
2. Put it in .env (copy .env.example) as DISCORD_TOKEN=... or export it in the environment.
3. Invite the bot with the OAuth2 URL generator: scopes "bot" and "applications.commands";
   bot permissions "Send Messages", "Embed Links", "Attach Files", "Add Reactions",
   "Read Message History", "Create Public Threads" and "Send Messages in Threads" (and
   "View Channels"). The permissions integer is 309237763136.
4. Optional: set DEV_GUILD_ID to your test server's id so slash commands appear at once.
   Auto-classifying every posted image also needs the Message Content intent switched on
   under "Bot" and MESSAGE_CONTENT_INTENT=true.
"""
