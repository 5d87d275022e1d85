"""Cleaning a dataset by vote: candidates (a run's suspects, see imgcls.suspects), votes, a decision,
an undoable apply.

    board = CleaningBoard(store)
    cid = board.add_candidate(workshop_id, run_id, image_id, predicted="roses", kind="label", score=0.04,
                              reason="labelled *lavender*; the model is 91% sure it is *roses*")
    board.set_votes(cid, {"user1": {"delete"}, "user2": {"delete", "keep"}})
    summary = board.apply(workshop_id, quorum=2, who="host")    # deletes and relabels, one audit batch
    board.undo_last_apply(workshop_id, who="host")

A vote is a choice: "keep", "delete" or "label:<name>". Each person may pick several;
each pick counts once per person. A candidate is decided when at least `quorum` people
voted and one choice has a strict majority of them; everything else (ties included) keeps.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .errors import ConflictError, InvalidInput, NotFound
from .store import Store, now

log = logging.getLogger(__name__)

KEEP, DELETE, RELABEL = "keep", "delete", "label:"


@dataclass(frozen=True)
class Decision:
    action: str  # "keep", "delete" or "relabel"
    label: Optional[str] = None  # the new label, for relabel
    voters: int = 0
    votes: int = 0  # for the winning choice
    why: str = ""  # for keep: "no quorum", "tie", "no majority", "majority keep"


def tally(votes: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """{choice: number of distinct people who picked it}."""
    counts: dict[str, int] = {}
    for choices in votes.values():
        for choice in set(choices):
            counts[choice] = counts.get(choice, 0) + 1
    return counts


def decide(votes: Mapping[str, Iterable[str]], current_label: str, quorum: int = 2) -> Decision:
    """The outcome of one candidate's votes. Relabelling to its own label counts as keep."""
    if quorum < 1:
        raise InvalidInput("The quorum must be at least 1.")
    normal = {user: {KEEP if c == RELABEL + current_label else c for c in choices}
              for user, choices in votes.items() if choices}
    voters = len(normal)
    if voters < quorum:
        return Decision(KEEP, voters=voters, why=f"no quorum ({voters} of {quorum} votes)")
    counts = sorted(tally(normal).items(), key=lambda kv: -kv[1])
    (top, n), runner_up = counts[0], (counts[1][1] if len(counts) > 1 else 0)
    if n == runner_up:
        return Decision(KEEP, voters=voters, votes=n, why="tie")
    if n * 2 <= voters:
        return Decision(KEEP, voters=voters, votes=n, why="no majority")
    if top == DELETE:
        return Decision("delete", voters=voters, votes=n)
    if top.startswith(RELABEL):
        return Decision("relabel", label=top[len(RELABEL):], voters=voters, votes=n)
    return Decision(KEEP, voters=voters, votes=n, why="majority keep")


class VoteTable:
    """People's picks on items, one row per (item, person, choice): clean-up votes, and the votes on classify
    answers (imgcls.stumpers). Use it inside the owner's checks (is the item still open?)."""

    def __init__(self, store: Store, table: str, key: str) -> None:
        self.store, self.table, self.key = store, table, key
        with store.transaction():
            store.db[table].create({key: int, "user_id": str, "choice": str}, pk=(key, "user_id", "choice"),
                                   if_not_exists=True)

    def votes(self, item_id: int) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for user, choice in self.store.db.conn.execute(
                f"SELECT user_id, choice FROM [{self.table}] WHERE [{self.key}] = ?", [item_id]):
            out.setdefault(user, set()).add(choice)
        return out

    def pick(self, item_id: int, user_id: str, choice: str, on: bool = True) -> None:
        """Add (or with on=False withdraw) one person's pick."""
        if on:
            sql = f"INSERT OR IGNORE INTO [{self.table}] ([{self.key}], user_id, choice) VALUES (?, ?, ?)"
        else:
            sql = f"DELETE FROM [{self.table}] WHERE [{self.key}] = ? AND user_id = ? AND choice = ?"
        with self.store.transaction():
            self.store.db.conn.execute(sql, [item_id, str(user_id), choice])

    def replace(self, item_id: int, votes: Mapping[str, Iterable[str]]) -> None:
        """All of an item's votes at once (a recount after a restart, from the reactions)."""
        with self.store.transaction():
            self.clear(item_id)
            for user, choices in votes.items():
                for choice in set(choices):
                    self.pick(item_id, str(user), choice)

    def clear(self, item_id: int) -> None:
        with self.store.transaction():
            self.store.db.conn.execute(f"DELETE FROM [{self.table}] WHERE [{self.key}] = ?", [item_id])


class CleaningBoard:
    """Vote candidates and their votes, kept in the workshop database so a restart loses nothing."""

    def __init__(self, store: Store) -> None:
        self.store = store
        db, fk = store.db, [("workshop_id", "workshops", "id")]
        with store.transaction():
            db["clean_candidates"].create(
                {"id": int, "workshop_id": int, "run_id": int, "image_id": int, "label": str, "predicted": str,
                 "probability": float, "loss": float, "channel_id": int, "message_id": int, "status": str,
                 "decision": str, "apply_id": int, "created_at": str, "legend": str},
                pk="id", foreign_keys=fk, not_null={"status"}, defaults={"status": "open"}, if_not_exists=True)
            have = set(db["clean_candidates"].columns_dict)  # added with whole-dataset suspects
            for name, kind in {"kind": str, "score": float, "reason": str}.items():
                if name not in have:
                    db["clean_candidates"].add_column(name, kind)
            db["clean_applies"].create(
                {"id": int, "workshop_id": int, "batch": str, "who": str, "at": str, "summary": str,
                 "undone_at": str}, pk="id", foreign_keys=fk, if_not_exists=True)
        self.table = VoteTable(store, "clean_votes", "candidate_id")

    # ---------------------------------------------------------- candidates

    def add_candidate(self, workshop_id: int, run_id: int, image_id: int, *, predicted: str,
                      probability: float = 0.0, loss: float = 0.0, channel_id: Optional[int] = None,
                      legend: Iterable[str] = (), kind: str = "label", score: Optional[float] = None,
                      reason: str = "") -> int:
        """Put an image up for a vote; `legend` is the label order its relabel choices were shown in.
        `kind`, `score` and `reason` say why it is suspect (imgcls.suspects)."""
        s = self.store
        with s.transaction():
            image = s.image(image_id)
            if image["workshop_id"] != workshop_id:
                raise NotFound(f"There is no image {image_id} in this workshop.")
            if self._first("SELECT 1 FROM clean_candidates WHERE image_id = ? AND status = 'open'", [image_id]):
                raise ConflictError(f"Image {image_id} is already up for a vote.")
            return s.db["clean_candidates"].insert({
                "workshop_id": workshop_id, "run_id": run_id, "image_id": image_id, "label": image["label"],
                "predicted": predicted, "probability": probability, "loss": loss, "channel_id": channel_id,
                "status": "open", "created_at": now(), "legend": json.dumps(list(legend)), "kind": kind,
                "score": score, "reason": reason}).last_pk

    def withdraw(self, candidate_id: int) -> None:
        """Forget a candidate whose message never went out (and so has no votes)."""
        with self.store.transaction():
            self.table.clear(candidate_id)
            self.store.db.execute("DELETE FROM clean_candidates WHERE id = ? AND message_id IS NULL", [candidate_id])

    def set_message(self, candidate_id: int, message_id: int) -> None:
        with self.store.transaction():
            self.store.db["clean_candidates"].update(candidate_id, {"message_id": message_id})

    def _first(self, sql: str, params: Iterable[Any] = ()) -> Optional[dict[str, Any]]:
        return next(iter(self.store.db.query(sql, list(params))), None)

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return list(self.store.db.query(sql, list(params)))

    def candidate(self, candidate_id: int) -> dict[str, Any]:
        row = self._first("SELECT * FROM clean_candidates WHERE id = ?", [candidate_id])
        if row is None:
            raise NotFound(f"There is no vote {candidate_id}.")
        return _decoded(row)

    def by_message(self, message_id: int) -> Optional[dict[str, Any]]:
        row = self._first("SELECT * FROM clean_candidates WHERE message_id = ? AND status = 'open'", [message_id])
        return _decoded(row) if row else None

    def open_candidates(self, workshop_id: Optional[int] = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM clean_candidates WHERE status = 'open'", []
        if workshop_id is not None:
            sql, params = sql + " AND workshop_id = ?", [workshop_id]
        return [_decoded(r) for r in self._all(sql + " ORDER BY id", params)]

    def open_image_ids(self, workshop_id: int) -> set[int]:
        return {r["image_id"] for r in self.open_candidates(workshop_id)}

    def kept_scores(self, workshop_id: int) -> dict[int, tuple[str, float]]:
        """{image_id: (why it was suspect, its score) when the group last voted to keep it}, for images whose
        latest vote (one that was not undone) ended in a majority for keep. A vote left without a quorum, or
        tied, decided nothing."""
        rows = self._all(
            "SELECT c.image_id, c.kind, c.score, c.decision FROM clean_candidates c JOIN clean_applies a "
            "ON a.id = c.apply_id WHERE c.workshop_id = ? AND c.status = 'closed' AND a.undone_at IS NULL "
            "ORDER BY c.id", [workshop_id])
        kept: dict[int, tuple[str, float]] = {}
        for r in rows:
            decision = json.loads(r["decision"] or "{}")
            if decision.get("action") == KEEP and decision.get("why") == "majority keep" and r["score"] is not None:
                kept[r["image_id"]] = (r["kind"] or "label", float(r["score"]))
            else:
                kept.pop(r["image_id"], None)
        return kept

    # ---------------------------------------------------------- votes

    def votes(self, candidate_id: int) -> dict[str, set[str]]:
        return self.table.votes(candidate_id)

    def vote(self, candidate_id: int, user_id: str, choice: str, *, on: bool = True) -> dict[str, set[str]]:
        """Add (or with on=False withdraw) one person's pick; returns all votes on the candidate."""
        with self.store.transaction():
            if self.candidate(candidate_id)["status"] != "open":
                raise ConflictError("This vote is closed.")
            self.table.pick(candidate_id, user_id, choice, on)
        return self.votes(candidate_id)

    def set_votes(self, candidate_id: int, votes: Mapping[str, Iterable[str]]) -> None:
        """Replace a candidate's votes with a fresh count (after a restart, from the reactions)."""
        self.table.replace(candidate_id, votes)

    def record_added(self, workshop_id: int, image_id: int, label: str, *, who: Optional[str] = None,
                     why: str = "", extra: Optional[Mapping[str, Any]] = None) -> int:
        """An image the group agreed to add (a stumper), recorded as a clean-up of its own: `undo_last_apply` sets
        it aside again. Returns the clean-up's id."""
        s = self.store
        with s.transaction():
            batch = uuid.uuid4().hex
            s.record_addition(workshop_id, image_id, batch=batch, who=who, why=why)
            summary = {"added": 1, "deleted": 0, "relabelled": 0, "kept": 0, **(extra or {}),
                       "results": [{"image_id": image_id, "action": "add", "label": label}]}
            return s.db["clean_applies"].insert({"workshop_id": workshop_id, "batch": batch, "who": who, "at": now(),
                                                 "summary": json.dumps(summary)}).last_pk

    # ---------------------------------------------------------- apply and undo

    def apply(self, workshop_id: int, *, quorum: int = 2, who: Optional[str] = None) -> dict[str, Any]:
        """Decide every open candidate and apply the deletes and relabels as one audit batch."""
        s = self.store
        batch = uuid.uuid4().hex
        results = []
        with s.transaction():
            open_rows = self.open_candidates(workshop_id)
            if not open_rows:
                raise NotFound("There are no open votes; post some with /clean first.")
            apply_id = s.db["clean_applies"].insert({"workshop_id": workshop_id, "batch": batch, "who": who,
                                                     "at": now()}).last_pk
            for c in open_rows:
                image = s.image(c["image_id"])
                decision = decide(self.votes(c["id"]), image["label"], quorum)
                note = decision.why
                if image["status"] != "active" and decision.action != KEEP:
                    decision, note = Decision(KEEP, voters=decision.voters), "the image was deleted meanwhile"
                elif decision.action == "relabel" and not self._has_label(workshop_id, decision.label):
                    decision, note = Decision(KEEP, voters=decision.voters), f"label '{decision.label}' was removed"
                why = f"vote {c['id']}: {decision.votes} of {decision.voters}"
                if decision.action == "delete":
                    s.delete_images(workshop_id, [image["id"]], who=who, why=why, batch=batch)
                elif decision.action == "relabel":
                    s.relabel(workshop_id, image["id"], decision.label, who=who, why=why, batch=batch)
                s.db["clean_candidates"].update(c["id"], {
                    "status": "closed", "apply_id": apply_id,
                    "decision": json.dumps({"action": decision.action, "label": decision.label,
                                            "voters": decision.voters, "votes": decision.votes, "why": note})})
                results.append({"candidate_id": c["id"], "image_id": image["id"], "old_label": image["label"],
                                "action": decision.action, "label": decision.label, "voters": decision.voters,
                                "votes": decision.votes, "why": note, "message_id": c["message_id"]})
            summary = {"apply_id": apply_id, "batch": batch, "results": results,
                       "deleted": sum(r["action"] == "delete" for r in results),
                       "relabelled": sum(r["action"] == "relabel" for r in results),
                       "kept": sum(r["action"] == KEEP for r in results)}
            s.db["clean_applies"].update(apply_id, {"summary": json.dumps(summary)})
        return summary

    def _has_label(self, workshop_id: int, label: Optional[str]) -> bool:
        try:
            self.store.resolve_label(workshop_id, label or "")
            return True
        except NotFound:
            return False

    def undo_last_apply(self, workshop_id: int, *, who: Optional[str] = None) -> dict[str, Any]:
        """Revert the newest apply that is not undone yet (a vote's deletes and relabels, or a stumper the group
        added: it is set aside again); returns its summary."""
        s = self.store
        with s.transaction():
            row = self._first("SELECT * FROM clean_applies WHERE workshop_id = ? AND undone_at IS NULL ORDER BY id "
                              "DESC LIMIT 1", [workshop_id])
            if row is None:
                raise NotFound("There is no applied clean-up to undo.")
            summary = json.loads(row["summary"] or "{}")
            if summary.get("deleted") or summary.get("relabelled") or summary.get("added"):
                try:
                    s.undo(workshop_id, batch=row["batch"], who=who, why=f"undo clean-up {row['id']}")
                except NotFound:
                    log.info("clean-up %s was already undone change by change", row["id"])
            s.db["clean_applies"].update(row["id"], {"undone_at": now()})
        return summary

    def changes_since(self, workshop_id: int, since: str) -> list[dict[str, Any]]:
        """Deletes and relabels made after `since` (ISO time) that are still in effect."""
        return self._all(
            "SELECT a.*, i.label AS current_label FROM audit a JOIN images i ON i.id = a.image_id "
            "WHERE a.workshop_id = ? AND a.at > ? AND a.action != 'undo' AND a.undone_by IS NULL ORDER BY a.id",
            [workshop_id, since])


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["legend"] = json.loads(row["legend"]) if row.get("legend") else []
    row["decision"] = json.loads(row["decision"]) if row.get("decision") else None
    return row


__all__ = ["CleaningBoard", "Decision", "decide", "tally", "KEEP", "DELETE", "RELABEL"]
