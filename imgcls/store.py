"""The workshop database (sqlite-utils) and the image files.

`Store(data_dir)` owns `data_dir/workshops.db`, `data_dir/images/` (content-addressed
files) and `data_dir/runs/` (one folder per training run). Every change is a short
`BEGIN IMMEDIATE` transaction, so several processes can write safely (WAL mode, one
writer at a time). Deletes are soft: nothing is ever lost, and every delete, relabel and
undo is written to the audit log.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import unicodedata
import uuid
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import sqlite_utils

from .errors import ConflictError, InvalidInput, NotFound
from .ingest import phash_distance
from .types import REJECT_REASONS, TRANSIENT_REASONS, ImageMeta, IngestLimits, IngestOutcome, TrainResult, to_plain

log = logging.getLogger(__name__)

MAX_LABELS = 20
MAX_LABEL_LEN = 40
RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def label_key(name: str) -> str:
    """The case-insensitive identity of a label."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


#: Characters that draw nothing (or a blank) yet make two labels that look the same differ: zero-width
#: spaces and joiners, fillers (U+3164 and friends), the blank braille pattern, the word joiner family.
INVISIBLE = frozenset("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0\ufeff"
                      + "".join(map(chr, range(0x200b, 0x2010))) + "".join(map(chr, range(0x2060, 0x2070)))
                      + "".join(map(chr, range(0xfe00, 0xfe10))))
#: Bidirectional overrides and isolates: they reorder the text around them (a name that reads backwards).
BIDI_CONTROLS = frozenset("\u200e\u200f\u061c" + "".join(map(chr, range(0x202a, 0x202f)))
                          + "".join(map(chr, range(0x2066, 0x206a))))


def _invisible(text: str, i: int) -> bool:
    """Whether text[i] draws nothing. What is part of an emoji is fine: a zero-width joiner between two emoji
    (👩‍🌾), a variation selector after an emoji or before a keycap (1️⃣), the tag letters of a flag (🏴 + tags),
    and emoji newer than this Python's Unicode tables."""
    c = text[i]
    before, after = text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else ""
    if c == "\u200d" and _emoji(before) and _emoji(after):
        return False
    if c in "\ufe0e\ufe0f" and (_emoji(before) or after == "\u20e3"):
        return False
    if 0xE0020 <= ord(c) <= 0xE007F and "\U0001f3f4" in text[:i]:
        return False
    kind = unicodedata.category(c)
    if kind == "Cn" and 0x1F000 <= ord(c) <= 0x1FAFF:
        return False
    return c in INVISIBLE or kind in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp") or (kind == "Zs" and c != " ")


def _emoji(c: str) -> bool:
    return bool(c) and (unicodedata.category(c) == "So" or c == "\ufe0f" or 0x1F3FB <= ord(c) <= 0x1F3FF)


def clean_label(name: str) -> str:
    """A label as it will be stored (NFKC: fullwidth and compatibility forms become plain ones), or
    InvalidInput saying why not."""
    name = unicodedata.normalize("NFKC", str(name)).strip()
    if not name:
        raise InvalidInput("A label cannot be empty.")
    if len(name) > MAX_LABEL_LEN:
        raise InvalidInput(f"Label '{name[:20]}…' is {len(name)} characters; the limit is {MAX_LABEL_LEN}.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(f"Label '{name}' cannot contain / or \\ or be '.' or '..'.")
    if any(_invisible(name, i) for i in range(len(name))):
        raise InvalidInput(f"Label {name!r} contains invisible or control characters (zero-width spaces, "
                           "joiners, fillers, odd spaces); type it again with letters, digits and plain spaces.")
    return name


def parse_labels(text: str) -> list[str]:
    """'sunflowers, lavender, roses' -> ['sunflowers', 'lavender', 'roses']."""
    return [part for part in (p.strip() for p in str(text).split(",")) if part]


class Store:
    """The workshop database and files. One per process; use it from one thread at a time."""

    def __init__(self, data_dir: str | os.PathLike, *, busy_timeout: float = 30.0):
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.runs_dir = self.data_dir / "runs"
        for d in (self.data_dir, self.images_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.data_dir / "workshops.db", timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._depth = 0
        self._enable_wal(busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        with self.transaction():
            self._create_schema()

    def close(self) -> None:
        self.db.conn.close()

    def _enable_wal(self, timeout: float) -> None:
        """Switch to WAL. SQLite answers 'database is locked' at once, without waiting, while another
        process is opening the same new database, so retry for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.db.enable_wal()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One writer at a time, across processes: BEGIN IMMEDIATE ... COMMIT."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self.db.conn.execute("COMMIT")
            except BaseException:
                if self.db.conn.in_transaction:  # also when COMMIT itself failed
                    self.db.conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(f"[{c}]" for c in row)
        marks = ", ".join("?" for _ in row)
        cur = self.db.conn.execute(f"INSERT INTO [{table}] ({cols}) VALUES ({marks})", list(row.values()))
        return int(cur.lastrowid)

    def _update(self, table: str, pk: int, values: dict[str, Any]) -> None:
        sets = ", ".join(f"[{c}] = ?" for c in values)
        self.db.conn.execute(f"UPDATE [{table}] SET {sets} WHERE id = ?", [*values.values(), pk])

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.conn.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Optional[dict[str, Any]]:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _create_schema(self) -> None:
        db, fk = self.db, [("workshop_id", "workshops", "id")]
        db["workshops"].create(
            {"id": int, "name": str, "guild_id": int, "channel_id": int, "host_id": int,
             "created_at": str, "settings": str, "status": str, "archived_at": str},
            pk="id", not_null={"name", "created_at", "status"}, defaults={"status": "active", "settings": "{}"},
            if_not_exists=True,
        )
        db["labels"].create(
            {"id": int, "workshop_id": int, "name": str, "key": str, "position": int, "created_at": str},
            pk="id", foreign_keys=fk, not_null={"name", "key"}, if_not_exists=True,
        )
        db["labels"].create_index(["workshop_id", "key"], unique=True, if_not_exists=True)
        db["images"].create(
            {"id": int, "workshop_id": int, "sha256": str, "phash": str, "width": int, "height": int,
             "bytes": int, "path": str, "label": str, "source": str, "source_url": str, "landing_url": str,
             "license": str, "license_url": str, "creator": str, "title": str, "attribution": str,
             "added_by": str, "added_at": str, "status": str, "status_reason": str},
            pk="id", foreign_keys=fk, not_null={"sha256", "path", "label", "status"}, defaults={"status": "active"},
            if_not_exists=True,
        )
        db["images"].create_index(["workshop_id", "sha256"], unique=True, if_not_exists=True)
        db["images"].create_index(["workshop_id", "label", "status"], if_not_exists=True)
        db["images"].create_index(["path"], if_not_exists=True)
        db["rejects"].create(
            {"id": int, "workshop_id": int, "label": str, "reason": str, "detail": str, "source": str,
             "source_url": str, "added_by": str, "at": str, "duplicate_of": int},
            pk="id", foreign_keys=fk, if_not_exists=True,
        )
        db["audit"].create(
            {"id": int, "workshop_id": int, "image_id": int, "batch": str, "action": str, "field": str,
             "old": str, "new": str, "who": str, "why": str, "at": str, "undone_by": int, "undoes": int},
            pk="id", foreign_keys=fk, if_not_exists=True,
        )
        db["search_cache"].create(
            {"provider": str, "query": str, "page": int, "params": str, "response": str, "fetched_at": str},
            pk=("provider", "query", "page", "params"), if_not_exists=True,
        )
        db["runs"].create(
            {"id": int, "workshop_id": int, "status": str, "params": str, "requested_by": str,
             "created_at": str, "started_at": str, "finished_at": str, "snapshot": str, "labels": str,
             "epochs": str, "metrics": str, "confusion": str, "most_confused": str, "top_losses": str,
             "valid_predictions": str, "model_path": str, "model_sha256": str, "artefacts": str,
             "error": str, "device": str, "parent_run_id": int},
            pk="id", foreign_keys=fk, not_null={"status"}, if_not_exists=True,
        )
        # Added after the first release: where a run is announced, and which process runs it.
        self._ensure_columns("runs", {"owner": str, "channel_id": int, "message_id": int})
        # Added with whole-dataset suspects and the fair before/after.
        self._ensure_columns("runs", {"parent_predictions": str, "scoring": str})
        # Added with ONNX prediction: the same model, for ONNX Runtime.
        self._ensure_columns("runs", {"onnx_path": str, "onnx_sha256": str})
        # Added with pasted images that teach the model: an image the group added after the model got it wrong.
        self._ensure_columns("images", {"stumper": int})
        db["downloads"].create(
            {"id": int, "workshop_id": int, "status": str, "per_label": int, "sources": str, "requested_by": str,
             "owner": str, "channel_id": int, "message_id": int, "created_at": str, "finished_at": str,
             "summary": str},
            pk="id", foreign_keys=fk, not_null={"status"}, if_not_exists=True,
        )

    def _ensure_columns(self, table: str, columns: dict[str, type]) -> None:
        have = set(self.db[table].columns_dict)
        for name, kind in columns.items():
            if name not in have:
                self.db[table].add_column(name, kind)

    # ------------------------------------------------------------ workshops

    def create_workshop(
        self, name: str, labels: Iterable[str] = (), *, guild_id: Optional[int] = None,
        channel_id: Optional[int] = None, host_id: Optional[int] = None, settings: Optional[dict] = None,
    ) -> dict[str, Any]:
        name = str(name).strip()
        if not name or len(name) > 100 or any(unicodedata.category(c) == "Cc" for c in name):
            raise InvalidInput("A workshop name must be 1-100 characters with no control characters.")
        if any(c in BIDI_CONTROLS for c in name):
            raise InvalidInput("A workshop name cannot contain text-direction controls (they make it read "
                               "differently from how it was typed); type it again without them.")
        with self.transaction():
            for row in self._active_workshops(guild_id):
                if channel_id is not None and row["channel_id"] == channel_id:
                    raise ConflictError(f"Workshop '{row['name']}' is already running in this channel; reset it first.")
                if label_key(row["name"]) == label_key(name):
                    raise ConflictError(f"There is already a workshop called '{row['name']}'; pick another name.")
            wid = self._insert("workshops", {
                "name": name, "guild_id": guild_id, "channel_id": channel_id, "host_id": host_id,
                "created_at": now(), "settings": json.dumps(settings or {}), "status": "active",
            })
            self.add_labels(wid, labels)
        return self.workshop(wid)

    def workshop(self, workshop_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM workshops WHERE id = ?", [workshop_id])
        if row is None:
            raise NotFound(f"There is no workshop {workshop_id}.")
        row["settings"] = json.loads(row["settings"] or "{}")
        return row

    def update_workshop_settings(self, workshop_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """Merge `values` into the workshop's settings (its guide's state, for one); returns them all."""
        with self.transaction():
            settings = {**self.workshop(workshop_id)["settings"], **values}
            self._update("workshops", workshop_id, {"settings": json.dumps(settings)})
        return settings

    def find_workshop(
        self, name: Optional[str] = None, *, guild_id: Optional[int] = None, channel_id: Optional[int] = None
    ) -> dict[str, Any]:
        """The active workshop with this name (CLI) or in this channel (Discord)."""
        rows = self._active_workshops(guild_id)
        if channel_id is not None:
            rows = [r for r in rows if r["channel_id"] == channel_id]
            missing = "There is no workshop in this channel; start one first."
        else:
            rows = [r for r in rows if label_key(r["name"]) == label_key(str(name))]
            missing = f"There is no workshop called '{name}'; create it with `imgcls init {name} --labels a,b`."
        if not rows:
            raise NotFound(missing)
        return self.workshop(rows[-1]["id"])

    def _active_workshops(self, guild_id: Optional[int]) -> list[dict[str, Any]]:
        return self._rows("SELECT id, name, channel_id FROM workshops WHERE status = 'active' AND guild_id IS ? "
                          "ORDER BY id", [guild_id])

    def workshops(self, *, guild_id: Optional[int] = None, include_archived: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT id FROM workshops WHERE guild_id IS ?" + ("" if include_archived else " AND status = 'active'")
        return [self.workshop(r["id"]) for r in self._rows(sql + " ORDER BY id", [guild_id])]

    def archive_workshop(self, workshop_id: int, *, who: Optional[str] = None) -> None:
        """Retire a workshop; its images, runs and audit log stay in the database."""
        with self.transaction():
            self.workshop(workshop_id)
            self._update("workshops", workshop_id, {"status": "archived", "archived_at": now()})

    # ------------------------------------------------------------ labels

    def labels(self, workshop_id: int) -> list[str]:
        rows = self._rows("SELECT name FROM labels WHERE workshop_id = ? ORDER BY position, id", [workshop_id])
        return [r["name"] for r in rows]

    def add_labels(self, workshop_id: int, names: Iterable[str]) -> list[str]:
        """Add labels in order; refuses duplicates (case-insensitive) and more than MAX_LABELS."""
        cleaned = [clean_label(n) for n in names]
        with self.transaction():
            existing = {label_key(n): n for n in self.labels(workshop_id)}
            for name in cleaned:
                if label_key(name) in existing:
                    raise ConflictError(f"Label '{name}' is already in this workshop (as '{existing[label_key(name)]}').")
                existing[label_key(name)] = name
            if len(existing) > MAX_LABELS:
                raise InvalidInput(f"A workshop can have at most {MAX_LABELS} labels; this would make {len(existing)}.")
            start = self._one("SELECT coalesce(max(position) + 1, 0) AS p FROM labels WHERE workshop_id = ?",
                              [workshop_id])["p"]  # after the last one, even when some were removed
            for i, name in enumerate(cleaned):
                self._insert("labels", {"workshop_id": workshop_id, "name": name, "key": label_key(name),
                                        "position": start + i, "created_at": now()})
        return cleaned

    def resolve_label(self, workshop_id: int, name: str) -> str:
        """The workshop's spelling of a label typed in any case, or NotFound listing the labels."""
        labels = self.labels(workshop_id)
        for label in labels:
            if label_key(label) == label_key(str(name)):
                return label
        raise NotFound(f"'{name}' is not a label here. Labels: {', '.join(labels) or '(none yet)'}.")

    def remove_label(self, workshop_id: int, name: str, *, who: Optional[str] = None) -> int:
        """Remove a label; its active images are soft-deleted (audited). Returns how many."""
        label = self.resolve_label(workshop_id, name)
        with self.transaction():
            ids = [r["id"] for r in self._rows(
                "SELECT id FROM images WHERE workshop_id = ? AND label = ? AND status = 'active'", [workshop_id, label])]
            if ids:
                self.delete_images(workshop_id, ids, who=who, why=f"label '{label}' removed")
            self.db.conn.execute("DELETE FROM labels WHERE workshop_id = ? AND key = ?", [workshop_id, label_key(label)])
        return len(ids)

    # ------------------------------------------------------------ images

    def ingest_limits(self, workshop_id: int) -> IngestLimits:
        s = self.workshop(workshop_id)["settings"]
        return IngestLimits(**{k: v for k, v in s.get("ingest", {}).items() if k in IngestLimits.__dataclass_fields__})

    def known_hashes(self, workshop_id: int) -> tuple[frozenset[str], tuple[str, ...]]:
        """(sha256 of every image, phash of every active image) — for ingest's early checks."""
        rows = self._rows("SELECT sha256, phash, status FROM images WHERE workshop_id = ?", [workshop_id])
        return frozenset(r["sha256"] for r in rows), tuple(r["phash"] for r in rows if r["status"] == "active" and r["phash"])

    def add_image(
        self, workshop_id: int, label: str, outcome: IngestOutcome, meta: ImageMeta = ImageMeta()
    ) -> IngestOutcome:
        """Record an ingested image (its new id comes back as `image_id`), or its rejection.

        Duplicates are re-checked here, under the write lock, so images ingested in parallel (with
        no known hashes) are still de-duplicated. The file of a refused image stays until
        `sweep_orphans`: another workshop may be about to record the same content-addressed file.
        """
        with self.transaction():
            label = self.resolve_label(workshop_id, label)
            if outcome.ok:
                refusal = self._find_duplicate(workshop_id, outcome.sha256, outcome.phash)
                if refusal is not None:
                    outcome = refusal
            elif outcome.reason in ("duplicate", "near_duplicate") and outcome.duplicate_of is None:
                original = self._find_duplicate(workshop_id, outcome.sha256, outcome.phash)
                outcome = replace(outcome, duplicate_of=original.duplicate_of if original else None)
            if not outcome.ok:
                self.record_reject(workshop_id, label, outcome.reason, outcome.detail, meta, outcome.duplicate_of)
                return outcome
            image_id = self._insert("images", {
                "workshop_id": workshop_id, "sha256": outcome.sha256, "phash": outcome.phash,
                "width": outcome.width, "height": outcome.height, "bytes": outcome.nbytes, "path": outcome.path,
                "label": label, **vars(meta), "added_at": now(), "status": "active",
            })
        return replace(outcome, image_id=image_id)

    def _find_duplicate(self, workshop_id: int, sha256: Optional[str], phash: Optional[str]) -> Optional[IngestOutcome]:
        """The refusal for an image this workshop already has (deleted ones too), or None."""
        same = self._one("SELECT id, status FROM images WHERE workshop_id = ? AND sha256 = ?", [workshop_id, sha256])
        if same:
            gone = " (it was deleted earlier)" if same["status"] == "deleted" else ""
            return IngestOutcome(ok=False, reason="duplicate", sha256=sha256, phash=phash, duplicate_of=same["id"],
                                 detail=f"the same image is already image {same['id']}{gone}")
        if not phash:
            return None
        distance = self.ingest_limits(workshop_id).near_duplicate_distance
        for row in self._rows("SELECT id, phash FROM images WHERE workshop_id = ? AND status = 'active' "
                              "AND phash IS NOT NULL ORDER BY id", [workshop_id]):
            if phash_distance(phash, row["phash"]) <= distance:
                return IngestOutcome(ok=False, reason="near_duplicate", sha256=sha256, phash=phash,
                                     duplicate_of=row["id"], detail=f"it looks almost the same as image {row['id']}")
        return None

    def sweep_orphans(self, min_age_seconds: float = 3600) -> int:
        """Remove image files no row points at (refused duplicates), once they are old enough that no
        ingest still in flight can be about to record them. Returns how many were removed."""
        cutoff = time.time() - min_age_seconds
        removed = 0
        for path in self.images_dir.glob("*/*.jpg"):
            rel = path.relative_to(self.images_dir).as_posix()
            with self.transaction():  # no row can be added for this file while we decide
                try:
                    if path.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                if self._one("SELECT 1 FROM images WHERE path = ? LIMIT 1", [rel]) is None:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def record_reject(self, workshop_id: int, label: Optional[str], reason: str, detail: str,
                      meta: ImageMeta = ImageMeta(), duplicate_of: Optional[int] = None) -> None:
        with self.transaction():
            self._insert("rejects", {"workshop_id": workshop_id, "label": label, "reason": reason, "detail": detail,
                                     "source": meta.source, "source_url": meta.source_url,
                                     "added_by": meta.added_by, "at": now(), "duplicate_of": duplicate_of})

    def image(self, image_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM images WHERE id = ?", [image_id])
        if row is None:
            raise NotFound(f"There is no image {image_id}.")
        return row

    def image_path(self, row: dict[str, Any]) -> Path:
        return self.images_dir / row["path"]

    def images(self, workshop_id: int, *, label: Optional[str] = None, status: Optional[str] = "active") -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM images WHERE workshop_id = ?", [workshop_id]
        if label is not None:
            sql, params = sql + " AND label = ?", params + [self.resolve_label(workshop_id, label)]
        if status is not None:
            sql, params = sql + " AND status = ?", params + [status]
        return self._rows(sql + " ORDER BY id", params)

    def counts(self, workshop_id: int) -> dict[str, int]:
        """Active images per label, in label order (labels with none included)."""
        rows = self._rows("SELECT label, count(*) AS n FROM images WHERE workshop_id = ? AND status = 'active' "
                          "GROUP BY label", [workshop_id])
        have = {r["label"]: r["n"] for r in rows}
        return {label: have.get(label, 0) for label in self.labels(workshop_id)}

    def attempted_urls(self, workshop_id: int) -> set[str]:
        """Source URLs a new download run should not fetch again: stored (or deleted) images, and
        refusals that will not change on a retry (everything but timeouts, network and HTTP errors)."""
        rows = self._rows(
            "SELECT source_url FROM images WHERE workshop_id = ? AND source_url IS NOT NULL UNION "
            "SELECT source_url FROM rejects WHERE workshop_id = ? AND source_url IS NOT NULL "
            f"AND reason NOT IN ({', '.join('?' for _ in TRANSIENT_REASONS)})",
            [workshop_id, workshop_id, *sorted(TRANSIENT_REASONS)])
        return {r["source_url"] for r in rows}

    # ------------------------------------------------------------ search cache

    def cached_search(self, provider: str, query: str, page: int, params: str = "") -> Optional[Any]:
        """A search response stored by `cache_search` (decoded JSON), or None."""
        row = self._one("SELECT response FROM search_cache WHERE provider = ? AND query = ? AND page = ? "
                        "AND params = ?", [provider, query, page, params])
        return json.loads(row["response"]) if row else None

    def cache_search(self, provider: str, query: str, page: int, response: Any, params: str = "") -> None:
        with self.transaction():
            self.db.conn.execute(
                "INSERT OR REPLACE INTO search_cache (provider, query, page, params, response, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", [provider, query, page, params, json.dumps(response), now()])

    def reject_counts(self, workshop_id: int) -> dict[str, int]:
        rows = self._rows("SELECT reason, count(*) AS n FROM rejects WHERE workshop_id = ? GROUP BY reason "
                          "ORDER BY n DESC", [workshop_id])
        return {r["reason"]: r["n"] for r in rows}

    # ------------------------------------------------------------ cleaning, with an audit log

    def _image_in(self, workshop_id: int, image_id: int) -> dict[str, Any]:
        row = self.image(image_id)
        if row["workshop_id"] != workshop_id:
            raise NotFound(f"There is no image {image_id} in this workshop.")
        return row

    def _audit(self, workshop_id: int, image_id: int, batch: str, action: str, field: str, old: Any, new: Any,
               who: Optional[str], why: Optional[str], undoes: Optional[int] = None) -> int:
        return self._insert("audit", {"workshop_id": workshop_id, "image_id": image_id, "batch": batch,
                                      "action": action, "field": field, "old": old, "new": new, "who": who,
                                      "why": why, "at": now(), "undoes": undoes})

    def record_addition(self, workshop_id: int, image_id: int, *, batch: str, who: Optional[str] = None,
                        why: str = "") -> int:
        """Audit an image the group agreed to add, so an undo of `batch` sets it aside (status back to deleted)."""
        with self.transaction():
            self._image_in(workshop_id, image_id)
            return self._audit(workshop_id, image_id, batch, "add", "status", "deleted", "active", who, why)

    def delete_image(self, workshop_id: int, image_id: int, *, who: Optional[str] = None, why: str = "") -> int:
        return self.delete_images(workshop_id, [image_id], who=who, why=why)[0]

    def delete_images(self, workshop_id: int, image_ids: Iterable[int], *, who: Optional[str] = None,
                      why: str = "", batch: Optional[str] = None) -> list[int]:
        """Soft-delete images; returns the audit ids. One batch, so `undo` restores them together."""
        batch = batch or uuid.uuid4().hex
        out = []
        with self.transaction():
            for image_id in dict.fromkeys(image_ids):  # each image once, in the order given
                row = self._image_in(workshop_id, image_id)
                if row["status"] == "deleted":
                    raise ConflictError(f"Image {image_id} is already deleted.")
                self._update("images", image_id, {"status": "deleted", "status_reason": why or None})
                out.append(self._audit(workshop_id, image_id, batch, "delete", "status", "active", "deleted", who, why))
        return out

    def relabel(self, workshop_id: int, image_id: int, label: str, *, who: Optional[str] = None, why: str = "",
                batch: Optional[str] = None) -> int:
        """Move an image to another label; returns the audit id."""
        label = self.resolve_label(workshop_id, label)
        with self.transaction():
            row = self._image_in(workshop_id, image_id)
            if row["status"] != "active":
                raise ConflictError(f"Image {image_id} is deleted; undo the delete before relabelling it.")
            if row["label"] == label:
                raise ConflictError(f"Image {image_id} is already labelled '{label}'.")
            self._update("images", image_id, {"label": label})
            return self._audit(workshop_id, image_id, batch or uuid.uuid4().hex, "relabel", "label",
                               row["label"], label, who, why)

    def audit_log(self, workshop_id: int) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM audit WHERE workshop_id = ? ORDER BY id", [workshop_id])

    def undo(self, workshop_id: int, change_id: Optional[int] = None, *, batch: Optional[str] = None,
             who: Optional[str] = None, why: str = "undo") -> list[int]:
        """Reverse the last batch of changes, a named batch, or one named change. Returns the new audit ids."""
        with self.transaction():
            if batch is not None:
                changes = self._rows("SELECT * FROM audit WHERE workshop_id = ? AND batch = ? AND undone_by IS NULL "
                                     "AND action != 'undo' ORDER BY id DESC", [workshop_id, batch])
                if not changes:
                    raise NotFound("Those changes were undone already.")
            elif change_id is None:
                last = self._one("SELECT batch FROM audit WHERE workshop_id = ? AND action != 'undo' "
                                 "AND undone_by IS NULL ORDER BY id DESC LIMIT 1", [workshop_id])
                if last is None:
                    raise NotFound("There is nothing to undo.")
                changes = self._rows("SELECT * FROM audit WHERE workshop_id = ? AND batch = ? AND undone_by IS NULL "
                                     "AND action != 'undo' ORDER BY id DESC", [workshop_id, last["batch"]])
            else:
                change = self._one("SELECT * FROM audit WHERE workshop_id = ? AND id = ?", [workshop_id, change_id])
                if change is None:
                    raise NotFound(f"There is no change {change_id} in this workshop.")
                if change["action"] == "undo" or change["undone_by"] is not None:
                    raise ConflictError(f"Change {change_id} is an undo or was undone already.")
                changes = [change]
            batch = uuid.uuid4().hex
            out = []
            for ch in changes:
                row = self.image(ch["image_id"])
                if str(row[ch["field"]]) != ch["new"]:
                    raise ConflictError(f"Image {row['id']} was changed again after change {ch['id']}; "
                                        "undo the later change first.")
                if ch["field"] == "label":
                    values = {"label": self._live_label(row, ch["old"])}
                else:
                    values = {"status": ch["old"], "status_reason": None}
                    if ch["old"] == "active":
                        values["label"] = self._live_label(row, row["label"])
                self._update("images", row["id"], values)
                new_id = self._audit(workshop_id, row["id"], batch, "undo", ch["field"], ch["new"], ch["old"],
                                     who, why, undoes=ch["id"])
                self._update("audit", ch["id"], {"undone_by": new_id})
                out.append(new_id)
        return out

    def _live_label(self, row: dict[str, Any], label: str) -> str:
        """The workshop's current spelling of `label`, which an undo is about to give image `row`."""
        try:
            return self.resolve_label(row["workshop_id"], label)
        except NotFound:
            raise ConflictError(f"Image {row['id']} would go back to label '{label}', which was removed; "
                                "add the label back first.") from None

    # ------------------------------------------------------------ runs

    def create_run(self, workshop_id: int, params: dict[str, Any], *, requested_by: Optional[str] = None,
                   parent_run_id: Optional[int] = None, channel_id: Optional[int] = None) -> int:
        with self.transaction():
            self.workshop(workshop_id)
            return self._insert("runs", {"workshop_id": workshop_id, "status": "queued", "params": json.dumps(params),
                                         "requested_by": requested_by, "created_at": now(),
                                         "parent_run_id": parent_run_id, "owner": process_owner(),
                                         "channel_id": channel_id})

    def run(self, run_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM runs WHERE id = ?", [run_id])
        if row is None:
            raise NotFound(f"There is no run {run_id}.")
        for key in ("params", "snapshot", "labels", "epochs", "metrics", "confusion", "most_confused",
                    "top_losses", "valid_predictions", "artefacts", "parent_predictions", "scoring"):
            row[key] = json.loads(row[key]) if row[key] else None
        return row

    def runs(self, workshop_id: int, *, status: Optional[str] = None) -> list[dict[str, Any]]:
        sql, params = "SELECT id FROM runs WHERE workshop_id = ?", [workshop_id]
        if status:
            sql, params = sql + " AND status = ?", params + [status]
        return [self.run(r["id"]) for r in self._rows(sql + " ORDER BY id", params)]

    def latest_run(self, workshop_id: int, *, status: str = "done") -> dict[str, Any]:
        row = self._one("SELECT id FROM runs WHERE workshop_id = ? AND status = ? ORDER BY id DESC LIMIT 1",
                        [workshop_id, status])
        if row is None:
            raise NotFound("This workshop has no finished training run yet; train one first.")
        return self.run(row["id"])

    def run_dir(self, run_id: int) -> Path:
        path = self.runs_dir / str(run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mark_run(self, run_id: int, status: str, *, error: Optional[str] = None, **values: Any) -> None:
        if status not in RUN_STATUSES:
            raise InvalidInput(f"Unknown run status {status!r}.")
        values = {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in values.items()}
        stamp = {"running": "started_at"}.get(status, "finished_at" if status != "queued" else None)
        with self.transaction():
            self.run(run_id)
            self._update("runs", run_id, {"status": status, "error": error, **values, **({stamp: now()} if stamp else {})})

    def finish_run(self, run_id: int, result: TrainResult) -> None:
        """Record a successful run's numbers, split and model; the snapshot keeps its items."""
        plain = to_plain(result)
        with self.transaction():  # read and rewrite the snapshot under the write lock
            self.mark_run(
                run_id, "done", labels=list(result.labels), epochs=plain["epochs"], device=result.device,
                metrics={"accuracy": result.accuracy, "valid_loss": result.valid_loss, "seconds": result.seconds,
                         "n_train": result.n_train, "n_valid": result.n_valid},
                confusion=plain["confusion"], most_confused=plain["most_confused"], top_losses=plain["top_losses"],
                valid_predictions=plain["valid_predictions"], parent_predictions=plain["parent_predictions"],
                scoring={"method": result.scoring_method, "seconds": result.scoring_seconds,
                         "train_seconds": result.train_seconds, "scored": len(result.scores),
                         "error": result.scoring_error or None},
                snapshot={**(self.run(run_id)["snapshot"] or {}), "split": plain["split"]},
                model_path=result.model_path, model_sha256=result.model_sha256, artefacts=dict(result.artefacts),
                onnx_path=result.onnx_path or None, onnx_sha256=result.onnx_sha256 or None,
                # what it trained with, the automatic recipe's choices included (a retrain repeats them)
                params={**(self.run(run_id)["params"] or {}), **dict(result.chosen),
                        **({"recipe": result.recipe} if result.recipe else {})},
            )

    def record_snapshot(self, run_id: int, items: Iterable[tuple[int, str]]) -> None:
        """The exact dataset a run was asked to train on: (image id, label) pairs."""
        with self.transaction():
            snapshot = self.run(run_id)["snapshot"] or {}
            self._update("runs", run_id, {"snapshot": json.dumps({**snapshot, "items": [list(i) for i in items]})})

    def set_run_message(self, run_id: int, message_id: Optional[int]) -> None:
        """Remember the channel message that shows this run's progress (it outlives interactions)."""
        with self.transaction():
            self._update("runs", run_id, {"message_id": message_id})

    def interrupted_runs(self) -> list[dict[str, Any]]:
        """Runs left queued or running by a process that has stopped; marks them interrupted.

        Runs owned by a live process (another bot, a CLI training right now) are left alone.
        """
        with self.transaction():
            rows = self._rows("SELECT id, owner FROM runs WHERE status IN ('queued', 'running')")
            rows = [r for r in rows if not owner_alive(r["owner"])]
            for r in rows:
                self._update("runs", r["id"], {"status": "interrupted", "finished_at": now(),
                                               "error": "the trainer stopped before this run finished"})
        return [self.run(r["id"]) for r in rows]

    # ------------------------------------------------------------ downloads (so one can resume after a restart)

    def start_download(self, workshop_id: int, per_label: int, sources: Iterable[str], *,
                       requested_by: Optional[str] = None, channel_id: Optional[int] = None) -> int:
        with self.transaction():
            self.workshop(workshop_id)
            return self._insert("downloads", {
                "workshop_id": workshop_id, "status": "running", "per_label": per_label,
                "sources": ",".join(sources), "requested_by": requested_by, "owner": process_owner(),
                "channel_id": channel_id, "created_at": now()})

    def download(self, download_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM downloads WHERE id = ?", [download_id])
        if row is None:
            raise NotFound(f"There is no download {download_id}.")
        return row

    def update_download(self, download_id: int, *, status: Optional[str] = None, **values: Any) -> None:
        if status is not None:
            values["status"] = status
            if status != "running":
                values["finished_at"] = now()
            else:
                values["owner"] = process_owner()
        with self.transaction():
            self._update("downloads", download_id, values)

    def active_download(self, workshop_id: int) -> Optional[dict[str, Any]]:
        return self._one("SELECT * FROM downloads WHERE workshop_id = ? AND status = 'running' ORDER BY id DESC "
                         "LIMIT 1", [workshop_id])

    def interrupted_downloads(self) -> list[dict[str, Any]]:
        """Downloads still marked running whose process has stopped: the ones to resume."""
        rows = self._rows("SELECT * FROM downloads WHERE status = 'running' ORDER BY id")
        return [r for r in rows if not owner_alive(r["owner"])]


def process_owner() -> str:
    """'host:pid' of this process, recorded on runs and downloads it starts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: Optional[str]) -> bool:
    """Whether the process that recorded `owner` is still running on this host. A different host name
    counts as gone: the data directory is local, and a recreated container gets a new name."""
    host, _, pid = (owner or "").rpartition(":")
    if not host or not pid.isdigit() or host != socket.gethostname():
        return False
    if int(pid) == os.getpid():
        return False  # this process is asking, so whoever wrote this with our pid was an earlier process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

__all__ = ["Store", "clean_label", "label_key", "parse_labels", "MAX_LABELS", "REJECT_REASONS"]
