"""Pasted images that teach the model: a classify answer the group says is wrong, and the label it agrees on.

    book = StumperBook(store, board)
    sid = book.add(workshop_id, pasted_bytes, user_id="42", filename="x.jpg", predicted="roses", run_id=3,
                   legend=["lavender", "sunflowers"], channel_id=..., guild_id=...)
    book.set_message(sid, message_id)
    book.vote(sid, "7", "label:lavender")            # or "keep": the model was right
    decision = book.decision(sid, quorum=2)          # cleaning.decide: a relabel is the group's answer
    outcome = book.add_to_dataset(sid, ingested, decision.label, who="7")   # an upload, marked as a stumper
    board.undo_last_apply(workshop_id)               # the host takes it back like any clean-up

The pasted bytes are kept (content-addressed, under data_dir/pasted/) while the answer takes
votes, so a vote that ends after a restart, or after Discord's attachment link has expired,
still has its image; they are deleted when it closes (a newer model, a day, or a decision). Votes are distinct people's reactions, as for clean-up
votes; an image joins the dataset only when a quorum agrees on one label, through ingest
and the store's own checks, recorded as the upload of the person who pasted it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .cleaning import KEEP, RELABEL, CleaningBoard, Decision, VoteTable, decide
from .errors import ConflictError, NotFound
from .store import Store, now
from .types import ImageMeta, IngestOutcome

log = logging.getLogger(__name__)

#: open: answered, nobody said wrong yet; asking: someone said wrong, the legend is up; added: it joined the
#: dataset; refused: ingest or the store refused it (a duplicate, say); closed: a newer model, or time, ended it.
STATUSES = ("open", "asking", "added", "refused", "closed")


class StumperBook:
    """Classify answers people can correct, their votes and what became of them; kept in the workshop database."""

    def __init__(self, store: Store, board: CleaningBoard) -> None:
        self.store, self.board = store, board
        self.pasted_dir = store.data_dir / "pasted"
        self.pasted_dir.mkdir(parents=True, exist_ok=True)
        db, fk = store.db, [("workshop_id", "workshops", "id")]
        with store.transaction():
            db["stumpers"].create(
                {"id": int, "workshop_id": int, "guild_id": int, "channel_id": int, "message_id": int,
                 "user_id": str, "sha256": str, "filename": str, "predicted": str, "probability": float,
                 "run_id": int, "legend": str, "status": str, "image_id": int, "decision": str, "detail": str,
                 "created_at": str},
                pk="id", foreign_keys=fk, not_null={"status"}, defaults={"status": "open"}, if_not_exists=True)
            db["stumpers"].create_index(["message_id"], if_not_exists=True)
        self.table = VoteTable(store, "stumper_votes", "stumper_id")

    # ---------------------------------------------------------- answers

    def add(self, workshop_id: int, data: bytes, *, user_id: str, filename: str, predicted: str, run_id: int,
            legend: Iterable[str], probability: float = 0.0, channel_id: Optional[int] = None,
            guild_id: Optional[int] = None) -> int:
        """Keep a pasted image and what the model said about it; returns the id its votes go to."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        with self.store.transaction():
            return self.store.db["stumpers"].insert({
                "workshop_id": workshop_id, "guild_id": guild_id, "channel_id": channel_id, "user_id": str(user_id),
                "sha256": digest, "filename": str(filename)[:200], "predicted": predicted, "probability": probability,
                "run_id": run_id, "legend": json.dumps(list(legend)), "status": "open", "created_at": now()}).last_pk

    def _path(self, digest: str) -> Path:
        return self.pasted_dir / digest[:2] / digest

    def pasted_bytes(self, stumper_id: int) -> bytes:
        row = self.get(stumper_id)
        try:
            return self._path(row["sha256"]).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"The pasted image for answer {stumper_id} is no longer kept.") from None

    def set_message(self, stumper_id: int, message_id: int) -> None:
        with self.store.transaction():
            self.store.db["stumpers"].update(stumper_id, {"message_id": message_id})

    def withdraw(self, stumper_id: int) -> None:
        """Forget an answer whose message never went out, and its pasted bytes unless another answer needs them."""
        with self.store.transaction():
            row = self.get(stumper_id)
            self.store.db.execute("DELETE FROM stumpers WHERE id = ? AND message_id IS NULL", [stumper_id])
            self._forget([row["sha256"]])

    def get(self, stumper_id: int) -> dict[str, Any]:
        rows = list(self.store.db.query("SELECT * FROM stumpers WHERE id = ?", [stumper_id]))
        if not rows:
            raise NotFound(f"There is no answer {stumper_id}.")
        return _decoded(rows[0])

    def by_message(self, message_id: int) -> Optional[dict[str, Any]]:
        rows = list(self.store.db.query("SELECT * FROM stumpers WHERE message_id = ?", [message_id]))
        return _decoded(rows[0]) if rows else None

    def open_answers(self) -> list[dict[str, Any]]:
        """Answers still taking votes, with their message: the ones to recount after a restart."""
        return [_decoded(r) for r in self.store.db.query(
            "SELECT s.* FROM stumpers s JOIN workshops w ON w.id = s.workshop_id WHERE s.status IN ('open', 'asking') "
            "AND s.message_id IS NOT NULL AND w.status = 'active' ORDER BY s.id")]

    def close_older(self, workshop_id: int, run_id: int) -> list[dict[str, Any]]:
        """A newer model is in use: answers from older runs stop taking votes. Returns them, as they were."""
        return self._close("workshop_id = ? AND run_id < ?", [workshop_id, run_id])

    def expire(self, hours: float) -> list[dict[str, Any]]:
        """Answers older than `hours` stop taking votes (their pasted images are not kept). Returns them."""
        cutoff = (datetime.now(timezone.utc) - timedelta(hours=hours)).isoformat(timespec="milliseconds")
        return self._close("created_at < ?", [cutoff])

    def _close(self, where: str, params: list) -> list[dict[str, Any]]:
        with self.store.transaction():
            rows = list(self.store.db.query(f"SELECT id, sha256, status, channel_id, message_id FROM stumpers "
                                            f"WHERE status IN ('open', 'asking') AND {where}", params))
            for r in rows:
                self.store.db["stumpers"].update(r["id"], {"status": "closed"})
            self._forget({r["sha256"] for r in rows})
        return rows

    def _forget(self, digests: Iterable[str]) -> None:
        """Delete kept pasted bytes no answer still taking votes needs: nothing pasted is kept longer than that."""
        for digest in digests:
            if not list(self.store.db.query("SELECT 1 FROM stumpers WHERE sha256 = ? AND status IN ('open', 'asking') "
                                            "LIMIT 1", [digest])):
                self._path(digest).unlink(missing_ok=True)

    def ask(self, stumper_id: int) -> bool:
        """Someone said the answer is wrong: the label legend goes up. True the first time only."""
        with self.store.transaction():
            cur = self.store.db.conn.execute("UPDATE stumpers SET status = 'asking' WHERE id = ? AND status = 'open'",
                                             [stumper_id])
        return cur.rowcount == 1

    # ---------------------------------------------------------- votes

    def votes(self, stumper_id: int) -> dict[str, set[str]]:
        return self.table.votes(stumper_id)

    def vote(self, stumper_id: int, user_id: str, choice: str, *, on: bool = True) -> dict[str, set[str]]:
        """Add (or with on=False withdraw) one person's pick: "keep" (the model was right) or "label:<name>"."""
        with self.store.transaction():
            if self.get(stumper_id)["status"] not in ("open", "asking"):
                raise ConflictError("This answer is closed.")
            self.table.pick(stumper_id, user_id, choice, on)
        return self.votes(stumper_id)

    def set_votes(self, stumper_id: int, votes: Mapping[str, Iterable[str]]) -> None:
        """Replace an answer's votes with a fresh count (after a restart, from the reactions)."""
        self.table.replace(stumper_id, votes)

    def decision(self, stumper_id: int, quorum: int) -> Decision:
        """What the votes say now: a relabel means a quorum agreed on that label (the model's answer is "keep")."""
        row = self.get(stumper_id)
        return decide(self.votes(stumper_id), row["predicted"], quorum)

    # ---------------------------------------------------------- joining the dataset

    def add_to_dataset(self, stumper_id: int, outcome: IngestOutcome, label: str, *, who: Optional[str] = None,
                       decision: Optional[Decision] = None) -> IngestOutcome:
        """Record the ingested image as the paster's upload under `label`, marked as a stumper, with an audit entry
        and a clean-up record so `/clean undo` (CleaningBoard.undo_last_apply) takes it out again. A refusal (a
        duplicate, say) closes the answer with its reason."""
        s = self.store
        with s.transaction():
            row = self.get(stumper_id)
            if row["status"] not in ("open", "asking"):
                raise ConflictError(f"Answer {stumper_id} is closed already.")
            meta = ImageMeta(source="upload", title=row["filename"], added_by=row["user_id"])
            outcome = s.add_image(row["workshop_id"], label, outcome, meta)
            detail = json.dumps({"label": label, "votes": decision.votes if decision else None,
                                 "voters": decision.voters if decision else None})
            if not outcome.ok:
                s.db["stumpers"].update(stumper_id, {"status": "refused", "decision": detail,
                                                     "detail": f"{outcome.reason}: {outcome.detail}"})
                self._forget([row["sha256"]])
                return outcome
            s.db.conn.execute("UPDATE images SET stumper = 1 WHERE id = ?", [outcome.image_id])
            why = f"stumper {stumper_id}: " + (f"{decision.votes} of {decision.voters}" if decision else "agreed")
            apply_id = self.board.record_added(row["workshop_id"], outcome.image_id, label, who=who, why=why,
                                               extra={"stumper_id": stumper_id})
            s.db["stumpers"].update(stumper_id, {"status": "added", "image_id": outcome.image_id, "decision": detail,
                                                 "detail": f"clean-up {apply_id}"})
            self._forget([row["sha256"]])  # the dataset has its own copy now
        return outcome


def choice_label(choice: str) -> Optional[str]:
    return choice[len(RELABEL):] if choice.startswith(RELABEL) else None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["legend"] = json.loads(row["legend"]) if row.get("legend") else []
    row["decision"] = json.loads(row["decision"]) if row.get("decision") else None
    return row


__all__ = ["StumperBook", "STATUSES", "KEEP", "choice_label"]
