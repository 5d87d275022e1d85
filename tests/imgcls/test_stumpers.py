"""Stumpers (pasted images the group says the model got wrong), the leaderboard, and the new pictures."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from imgcls.cleaning import CleaningBoard
from imgcls.errors import ConflictError
from imgcls.ingest import ingest, thumbnail_jpeg
from imgcls.interpret import render_learning_curve, side_by_side
from imgcls.leaderboard import leaderboard
from imgcls.stumpers import StumperBook
from imgcls.types import ImageMeta

from ..conftest import jpeg_bytes, make_image

LABELS = ["circles", "squares", "triangles"]


@pytest.fixture
def book(store):
    return StumperBook(store, CleaningBoard(store))


def workshop(store, guild=1, channel=10):
    return store.create_workshop(f"Shapes {guild}-{channel}", LABELS, guild_id=guild, channel_id=channel)["id"]


def paste(book, ws, data, user="alice", predicted="squares"):
    sid = book.add(ws, data, user_id=user, filename="mine.jpg", predicted=predicted, run_id=1,
                   legend=[x for x in LABELS if x != predicted], guild_id=1, channel_id=10)
    book.set_message(sid, 5000 + sid)
    return sid


def test_a_quorum_on_a_label_adds_the_pasted_image_as_the_pasters_stumper_and_undo_takes_it_back(store, book):
    ws = workshop(store)
    data = jpeg_bytes(make_image("circles", 4242))
    sid = paste(book, ws, data)
    assert book.by_message(5000 + sid)["id"] == sid and book.ask(sid) and not book.ask(sid)  # asked once
    book.vote(sid, "bob", "label:circles")
    assert book.decision(sid, quorum=2).action == "keep"  # one vote is no quorum: nothing is added
    book.vote(sid, "carol", "label:circles")
    decision = book.decision(sid, quorum=2)
    assert (decision.action, decision.label, decision.votes) == ("relabel", "circles", 2)

    outcome = ingest(book.pasted_bytes(sid), store.images_dir, limits=store.ingest_limits(ws))
    added = book.add_to_dataset(sid, outcome, "circles", who="alice", decision=decision)
    assert added.ok
    row = store.image(added.image_id)
    assert (row["label"], row["source"], row["added_by"], row["stumper"], row["status"]) == (
        "circles", "upload", "alice", 1, "active")
    assert book.get(sid)["status"] == "added" and book.open_answers() == []
    with pytest.raises(ConflictError):
        book.vote(sid, "dave", "label:circles")  # closed

    summary = CleaningBoard(store).undo_last_apply(ws, who="host")  # like any clean-up
    assert summary["added"] == 1 and store.image(added.image_id)["status"] == "deleted"
    assert [a["action"] for a in store.audit_log(ws)] == ["add", "undo"]


def test_the_model_being_right_adds_nothing_and_a_duplicate_is_refused_with_its_reason(store, book):
    ws = workshop(store)
    data = jpeg_bytes(make_image("squares", 77))
    first = ingest(data, store.images_dir, limits=store.ingest_limits(ws))
    store.add_image(ws, "squares", first, ImageMeta(source="upload", added_by="bob"))
    sid = paste(book, ws, data)
    book.ask(sid)
    book.vote(sid, "bob", "keep")
    book.vote(sid, "carol", "keep")
    assert book.decision(sid, quorum=2).action == "keep"  # the group says it was right
    book.vote(sid, "dave", "label:circles")
    book.vote(sid, "erin", "label:circles")
    book.vote(sid, "fred", "label:circles")
    decision = book.decision(sid, quorum=2)
    outcome = ingest(book.pasted_bytes(sid), store.images_dir, limits=store.ingest_limits(ws))
    refused = book.add_to_dataset(sid, outcome, decision.label, decision=decision)
    assert not refused.ok and refused.reason == "duplicate"
    assert book.get(sid)["status"] == "refused" and "duplicate" in book.get(sid)["detail"]


def test_pasted_bytes_survive_a_new_store_and_votes_can_be_recounted(tmp_path, store, book):
    ws = workshop(store)
    data = jpeg_bytes(make_image("triangles", 5))
    sid = paste(book, ws, data)
    again = StumperBook(store, CleaningBoard(store))  # after a restart
    assert again.pasted_bytes(sid) == data
    again.set_votes(sid, {"bob": {"label:circles"}, "carol": {"keep", "label:circles"}})
    assert again.votes(sid) == {"bob": {"label:circles"}, "carol": {"keep", "label:circles"}}
    assert [r["id"] for r in again.open_answers()] == [sid]
    twin = paste(again, ws, data)  # the same picture pasted again: one kept copy serves both answers
    again.ask(sid)
    closed = again.close_older(ws, run_id=2)  # a newer model answers now
    assert {(r["id"], r["status"]) for r in closed} == {(sid, "asking"), (twin, "open")}
    digest = again.get(sid)["sha256"]
    assert again.open_answers() == [] and not (store.data_dir / "pasted" / digest[:2] / digest).exists()
    with pytest.raises(ConflictError):
        again.vote(sid, "bob", "label:circles")
    assert again.expire(hours=0) == []  # nothing left open to expire


def test_the_leaderboard_counts_kept_uploads_agreeing_votes_and_stumpers_in_one_server_only(store, book):
    here, there = workshop(store, guild=1), workshop(store, guild=2, channel=20)
    board = CleaningBoard(store)
    ids = []
    for n in range(3):
        out = ingest(jpeg_bytes(make_image("circles", 900 + n)), store.images_dir)
        ids.append(store.add_image(here, "circles", out, ImageMeta(source="upload", added_by="111")).image_id)
    web = ingest(jpeg_bytes(make_image("squares", 950)), store.images_dir)  # a download: the host's, not counted
    store.add_image(here, "squares", web, ImageMeta(source="openverse", added_by="999"))
    elsewhere = ingest(jpeg_bytes(make_image("squares", 960)), store.images_dir)
    store.add_image(there, "squares", elsewhere, ImageMeta(source="upload", added_by="333"))

    cand = board.add_candidate(here, 1, ids[0], predicted="squares")
    board.set_votes(cand, {"222": {"delete"}, "333": {"delete"}, "111": {"keep"}})
    board.apply(here, quorum=2, who="host")  # deleted: 111's image no longer counts, 222 and 333 agreed

    sid = paste(book, here, jpeg_bytes(make_image("triangles", 970)), user="222")
    book.ask(sid)
    for user in ("111", "333"):
        book.vote(sid, user, "label:triangles")
    decision = book.decision(sid, quorum=2)
    book.add_to_dataset(sid, ingest(book.pasted_bytes(sid), store.images_dir), "triangles", decision=decision)

    rows = {r.user_id: r for r in leaderboard(store, 1)}
    assert set(rows) == {"111", "222", "333"}  # 999 only downloaded; nobody from server 2
    assert (rows["111"].images, rows["111"].votes, rows["111"].agreed, rows["111"].stumpers) == (2, 2, 1, 0)
    assert (rows["222"].images, rows["222"].votes, rows["222"].agreed, rows["222"].stumpers) == (1, 1, 1, 1)
    assert (rows["333"].images, rows["333"].votes, rows["333"].agreed, rows["333"].stumpers) == (0, 2, 2, 0)
    assert [r.user_id for r in leaderboard(store, 1)][0] == "222"  # the stumper is worth the most
    assert [(r.user_id, r.images) for r in leaderboard(store, 2)] == [("333", 1)]  # the other server's own


def test_the_learning_curve_and_side_by_side_pictures():
    epochs = [{"epoch": i, "phase": "frozen" if i == 0 else "unfrozen", "train_loss": 1.5 - i * 0.3,
               "valid_loss": 1.2 - i * 0.2, "accuracy": 0.6 + i * 0.1, "seconds": 3} for i in range(3)]
    curve = render_learning_curve(epochs)
    assert curve.startswith(b"\x89PNG") and Image.open(io.BytesIO(curve)).width > 300
    assert render_learning_curve([]).startswith(b"\x89PNG")
    left, right = (Image.new("RGB", (100, 80), c) for c in ("red", "blue"))
    bufs = []
    for im in (left, right):
        b = io.BytesIO()
        im.save(b, format="PNG")
        bufs.append(b.getvalue())
    pair = Image.open(io.BytesIO(side_by_side(*bufs, captions=("Before: run 1", "After: run 2"))))
    assert pair.width == 224 and pair.height == 120
    assert pair.getpixel((50, 100)) == (255, 0, 0) and pair.getpixel((174, 100)) == (0, 0, 255)


def test_a_thumbnail_is_small_and_upright():
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(jpeg_bytes(make_image("circles", 1, size=600)))))
    assert max(thumb.size) == 256 and thumb.format == "JPEG"
