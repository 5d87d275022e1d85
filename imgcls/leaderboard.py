"""Who helped most, in one server: images still in the dataset, votes that agreed, stumpers found.

    rows = leaderboard(store, guild_id)     # [Standing(user_id="42", images=5, votes=7, agreed=5, stumpers=1)]

Only this server's workshops count, so nothing is ever shown across servers. Images are the
participants' own uploads (not web downloads, which a host starts) that are still active
after cleaning. A vote agreed when the group's decision was a majority that still stands (not
undone) and it was the person's only pick; clean-up votes and stumper votes (once someone said
the answer was wrong) both count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from .cleaning import DELETE, KEEP, RELABEL
from .store import Store


@dataclass(frozen=True)
class Standing:
    user_id: str
    images: int = 0
    votes: int = 0
    agreed: int = 0
    stumpers: int = 0

    @property
    def points(self) -> int:
        """One per image kept and per agreeing vote, three per stumper (the hardest thing to find)."""
        return self.images + self.agreed + 3 * self.stumpers


def _winner(decision: Optional[dict]) -> Optional[str]:
    """The choice a closed vote's majority made, or None when nothing was decided (no quorum, a tie)."""
    if not decision:
        return None
    action = decision.get("action")
    if action == "delete":
        return DELETE
    if action == "relabel":
        return RELABEL + str(decision.get("label"))
    if action == KEEP and decision.get("why") == "majority keep":
        return KEEP
    return None


def leaderboard(store: Store, guild_id: Optional[int], limit: int = 10) -> list[Standing]:
    """The top `limit` participants of this server's workshops, most points first."""
    db = store.db
    stats: dict[str, dict[str, int]] = {}

    def bump(user: str, key: str, n: int = 1) -> None:
        stats.setdefault(str(user), {"images": 0, "votes": 0, "agreed": 0, "stumpers": 0})[key] += n

    for r in db.query(
            "SELECT i.added_by AS user, COUNT(*) AS n, SUM(COALESCE(i.stumper, 0)) AS stumpers FROM images i "
            "JOIN workshops w ON w.id = i.workshop_id WHERE w.guild_id IS ? AND i.source = 'upload' "
            "AND i.status = 'active' AND i.added_by IS NOT NULL GROUP BY i.added_by", [guild_id]):
        bump(r["user"], "images", r["n"])
        bump(r["user"], "stumpers", r["stumpers"] or 0)
    # a clean-up vote agreed with a decision that stands: closed by an apply that was not undone
    votes = db.query(
        "SELECT v.user_id, v.candidate_id AS item, v.choice, c.status, c.decision, a.undone_at FROM clean_votes v "
        "JOIN clean_candidates c ON c.id = v.candidate_id JOIN workshops w ON w.id = c.workshop_id "
        "LEFT JOIN clean_applies a ON a.id = c.apply_id WHERE w.guild_id IS ?", [guild_id])
    _count_votes(votes, bump, lambda r: _winner(json.loads(r["decision"])) if r["status"] == "closed"
                 and r["decision"] and not r["undone_at"] else None)
    # a stumper vote: cast on an answer someone said was wrong (not one a newer model closed); agreed when the image
    # it added is still in the dataset
    answers = db.query(
        "SELECT v.user_id, v.stumper_id AS item, v.choice, s.status, s.decision, i.status AS image_status "
        "FROM stumper_votes v JOIN stumpers s ON s.id = v.stumper_id JOIN workshops w ON w.id = s.workshop_id "
        "LEFT JOIN images i ON i.id = s.image_id WHERE w.guild_id IS ? AND s.status IN ('asking', 'added', 'refused')",
        [guild_id]) if "stumpers" in db.table_names() else []
    _count_votes(answers, bump, lambda r: RELABEL + json.loads(r["decision"])["label"]
                 if r["status"] == "added" and r["decision"] and r["image_status"] == "active" else None)
    rows = [Standing(user, **s) for user, s in stats.items() if user.isdigit()]  # Discord ids, not "seed" or "cli"
    rows.sort(key=lambda s: (-s.points, -s.votes, s.user_id))
    return [s for s in rows if s.points or s.votes][:limit]


def _count_votes(rows, bump, winner) -> None:
    """Each person's picks on each item: one vote cast per item, agreed when the pick was the winner alone (reacting
    with every choice agrees with nothing)."""
    picks: dict[tuple[str, int], tuple[set[str], Optional[str]]] = {}
    for r in rows:
        key = (r["user_id"], r["item"])
        if key not in picks:
            picks[key] = (set(), winner(r))
        picks[key][0].add(r["choice"])
    for (user, _), (chosen, won) in picks.items():
        bump(user, "votes")
        if won is not None and chosen == {won}:
            bump(user, "agreed")


__all__ = ["Standing", "leaderboard"]
