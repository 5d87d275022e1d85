"""The workshop's guided steps: which are done, which comes next, and when to say so.

    guide = load_guide()                                  # bot/guide.toml, or GUIDE_FILE
    news = await bot.db(advance, bot.store, workshop_id, "train", guide)
    if news.post:                                         # a step was finished: post the next one
        await channel.send(embeds=...embeds.guide_step(news.post, ...))
        await bot.db(posted, bot.store, workshop_id, news.post.key)

The texts live in bot/guide.toml so a host can adapt them. The state lives in the workshop's
settings in the database (`guide`: on or off, `done`: step keys, `posted`: steps announced), so
a restart neither repeats a step nor loses one. Steps finish in order (see CATCH_UP), and each
step is announced once, recorded after its message went out.
"""
from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from imgcls.errors import InvalidInput

log = logging.getLogger(__name__)

GUIDE_FILE = Path(__file__).with_name("guide.toml")
#: The events the bot reports, one per step; a guide file's steps use these keys, in this order.
KEYS = ("gather", "look", "train", "learn", "try", "clean", "retrain", "stump")


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    command: str
    do: str
    why: str
    who: str = "everyone"


@dataclass(frozen=True)
class Guide:
    steps: tuple[Step, ...]
    intro: str = ""
    finale: str = ""

    def index(self, key: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.key == key)

    def step(self, key: str) -> Step:
        return self.steps[self.index(key)]


def load_guide(path: Optional[str | Path] = None) -> Guide:
    """The guide's texts, checked: every step has its fields and a known key, in the bot's order."""
    path = Path(path or GUIDE_FILE)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"The guide file {path} could not be read: {exc}") from None
    steps = []
    for n, raw in enumerate(data.get("step") or [], 1):
        missing = [f for f in ("key", "title", "command", "do", "why") if not str(raw.get(f) or "").strip()]
        if missing:
            raise InvalidInput(f"{path}: step {n} lacks {', '.join(missing)}.")
        if raw["key"] not in KEYS:
            raise InvalidInput(f"{path}: step {n} has key {raw['key']!r}; keys are {', '.join(KEYS)}.")
        steps.append(Step(**{k: str(v).strip() for k, v in raw.items() if k in Step.__dataclass_fields__}))
    keys = [s.key for s in steps]
    if not steps or keys != sorted(keys, key=KEYS.index) or len(set(keys)) != len(keys):
        raise InvalidInput(f"{path}: the steps must be some of {', '.join(KEYS)}, each once, in that order.")
    return Guide(tuple(steps), str(data.get("intro") or "").strip(), str(data.get("finale") or "").strip())


@dataclass(frozen=True)
class News:
    """What an event changed: the step to announce now (or None), and whether the whole plan just finished. The
    caller records the announcement with `posted()` once the message is out, so a failed send loses nothing."""
    post: Optional[Step] = None
    finished: bool = False
    changed: bool = False


#: Events that finish the steps before theirs too: a group that trains without looking first has still gathered
#: images. The others (look, learn, try, stump) finish only their own step, and only once the steps before it are
#: done: a stumper found right after training does not end the workshop.
CATCH_UP = frozenset({"gather", "train", "clean", "retrain"})


def state(settings: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(guide on, keys done, keys announced) from a workshop's settings."""
    return bool(settings.get("guide", True)), list(settings.get("done") or []), list(settings.get("posted") or [])


def advance(store: Any, workshop_id: int, event: str, guide: Guide) -> News:
    """Record that `event` happened (run on the database thread: one read-modify-write)."""
    if event not in [s.key for s in guide.steps]:
        return News()
    with store.transaction():
        settings = store.workshop(workshop_id)["settings"]
        on, done, posted = state(settings)
        upto = guide.index(event)
        before = [s.key for s in guide.steps[:upto] if s.key not in done]
        if event not in CATCH_UP and before:
            return News()  # too early for this step: it counts when it happens again
        newly = before + ([event] if event not in done else [])
        if not newly:
            return News()
        done += newly
        store.update_workshop_settings(workshop_id, {"done": done})
    nxt = next((s for s in guide.steps if s.key not in done), None)
    if not on:
        return News(changed=True)
    if nxt is None:
        return News(finished="finale" not in posted, changed=True)
    return News(nxt if nxt.key not in posted else None, changed=True)


def posted(store: Any, workshop_id: int, key: str) -> None:
    """Record that step `key` (or "finale") was announced."""
    with store.transaction():
        _, _, keys = state(store.workshop(workshop_id)["settings"])
        if key not in keys:
            store.update_workshop_settings(workshop_id, {"posted": keys + [key]})


def start(store: Any, workshop_id: int, guide: Guide, on: bool) -> Optional[Step]:
    """A new workshop's guide: on or off; its first step is announced with the start."""
    first = guide.steps[0]
    store.update_workshop_settings(workshop_id, {"guide": on, "done": [], "posted": [first.key]})
    return first


def switch(store: Any, workshop_id: int, on: bool, guide: Guide) -> Optional[Step]:
    """Turn the guide on or off; turning it on returns the step to do next, to show again."""
    with store.transaction():
        settings = store.update_workshop_settings(workshop_id, {"guide": on})
    _, done, _ = state(settings)
    return next((s for s in guide.steps if s.key not in done), None) if on else None


def plan(settings: dict[str, Any], guide: Guide) -> list[tuple[Step, str]]:
    """Each step with "done", "next" or "later", for /workshop status."""
    _, done, _ = state(settings)
    out, seen_next = [], False
    for s in guide.steps:
        if s.key in done:
            out.append((s, "done"))
        elif not seen_next:
            out.append((s, "next"))
            seen_next = True
        else:
            out.append((s, "later"))
    return out
