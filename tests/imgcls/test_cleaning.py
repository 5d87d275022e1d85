"""Cleaning by vote: the decision rule, persisted votes, one undoable apply."""
from __future__ import annotations

import pytest

from tests.imgcls.test_store import added_ids, new_workshop
from imgcls.cleaning import CleaningBoard, decide, tally
from imgcls.errors import ConflictError, NotFound
from imgcls.store import Store


def test_tally_counts_each_person_once_per_choice():
    assert tally({"a": ["delete", "delete"], "b": {"delete", "keep"}}) == {"delete": 2, "keep": 1}


@pytest.mark.parametrize("votes, quorum, expected", [
    ({}, 2, ("keep", None)),
    ({"a": {"delete"}}, 2, ("keep", None)),  # no quorum
    ({"a": {"delete"}, "b": {"delete"}}, 2, ("delete", None)),
    ({"a": {"delete"}, "b": {"keep"}}, 2, ("keep", None)),  # tie keeps
    ({"a": {"label:roses"}, "b": {"label:roses"}, "c": {"delete"}}, 2, ("relabel", "roses")),
    ({"a": {"label:roses"}, "b": {"label:tulips"}, "c": {"delete"}}, 2, ("keep", None)),  # no majority
    ({"a": {"label:lavender"}, "b": {"label:lavender"}}, 2, ("keep", None)),  # its own label means keep
    ({"a": {"delete"}}, 1, ("delete", None)),
])
def test_decide(votes, quorum, expected):
    d = decide(votes, "lavender", quorum)
    assert (d.action, d.label) == expected


def test_votes_apply_and_undo_through_the_audit_log(store: Store):
    wid = new_workshop(store)
    ids = added_ids(store, wid, "circles", range(3))
    board = CleaningBoard(store)
    c_del = board.add_candidate(wid, 1, ids[0], predicted="squares", channel_id=5)
    c_rel = board.add_candidate(wid, 1, ids[1], predicted="squares")
    c_keep = board.add_candidate(wid, 1, ids[2], predicted="squares")
    board.set_message(c_del, 1001)
    assert board.by_message(1001)["id"] == c_del
    with pytest.raises(ConflictError):
        board.add_candidate(wid, 1, ids[0], predicted="squares")

    for user in ("u1", "u2"):
        board.vote(c_del, user, "delete")
        board.vote(c_rel, user, "label:squares")
    board.vote(c_keep, "u1", "delete")
    board.vote(c_keep, "u2", "delete")
    board.vote(c_keep, "u2", "delete", on=False)  # withdrawn: no quorum left
    assert board.votes(c_keep) == {"u1": {"delete"}}

    summary = board.apply(wid, quorum=2, who="host")
    assert (summary["deleted"], summary["relabelled"], summary["kept"]) == (1, 1, 1)
    assert store.image(ids[0])["status"] == "deleted"
    assert store.image(ids[1])["label"] == "squares"
    assert store.image(ids[2])["label"] == "circles"
    assert board.open_candidates(wid) == []
    assert {a["batch"] for a in store.audit_log(wid)} == {summary["batch"]}
    with pytest.raises(NotFound):
        board.apply(wid)
    with pytest.raises(ConflictError):
        board.vote(c_del, "u3", "keep")

    board.undo_last_apply(wid, who="host")
    assert store.image(ids[0])["status"] == "active"
    assert store.image(ids[1])["label"] == "circles"
    with pytest.raises(NotFound):
        board.undo_last_apply(wid)
    assert [c["image_id"] for c in board.changes_since(wid, "2000-01-01")] == []


def test_votes_survive_a_new_store_and_can_be_recounted(tmp_path):
    store = Store(tmp_path / "d")
    wid = new_workshop(store)
    [image] = added_ids(store, wid, "circles", [0])
    cid = CleaningBoard(store).add_candidate(wid, 1, image, predicted="squares")
    CleaningBoard(store).vote(cid, "u1", "keep")
    store.close()

    again = Store(tmp_path / "d")
    board = CleaningBoard(again)
    assert board.votes(cid) == {"u1": {"keep"}}
    board.set_votes(cid, {"u1": ["delete"], "u2": ["delete", "keep"]})
    assert board.votes(cid) == {"u1": {"delete"}, "u2": {"delete", "keep"}}
    assert board.apply(wid, quorum=2)["deleted"] == 1
    assert [c["image_id"] for c in board.changes_since(wid, "2000-01-01")] == [image]
    again.close()


def test_relabel_to_a_removed_label_keeps(store: Store):
    wid = new_workshop(store)
    [image] = added_ids(store, wid, "circles", [0])
    board = CleaningBoard(store)
    cid = board.add_candidate(wid, 1, image, predicted="triangles")
    board.set_votes(cid, {"a": ["label:triangles"], "b": ["label:triangles"]})
    store.remove_label(wid, "triangles")
    result = board.apply(wid)["results"][0]
    assert (result["action"], store.image(image)["label"]) == ("keep", "circles")
    assert "removed" in result["why"]
