"""Store: workshops, labels, images, soft deletes, relabels, undo, the audit log and runs."""
from __future__ import annotations

import hashlib
import multiprocessing
import re
import sqlite3
import time
import traceback
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import jpeg_bytes, make_image
from imgcls.errors import ConflictError, InvalidInput, NotFound
from imgcls.ingest import ingest
from imgcls.store import MAX_LABELS, Store, clean_label, label_key, parse_labels
from imgcls.types import EpochMetrics, ImageMeta, IngestOutcome, TopLoss, TrainResult

SHAPES = ["circles", "squares", "triangles"]


def new_workshop(store: Store, labels=SHAPES, name: str = "shapes", **kw) -> int:
    return store.create_workshop(name, labels, **kw)["id"]


def ingested(store: Store, workshop_id: int, kind: str = "circles", seed: int = 0, quality: int = 90,
             **known) -> IngestOutcome:
    data = jpeg_bytes(make_image(kind, seed), quality=quality)
    return ingest(data, store.images_dir, limits=store.ingest_limits(workshop_id), **known)


def add(store: Store, workshop_id: int, label: str = "circles", seed: int = 0, kind: str | None = None,
        meta: ImageMeta = ImageMeta(added_by="ada"), quality: int = 90) -> IngestOutcome:
    return store.add_image(workshop_id, label, ingested(store, workshop_id, kind or label, seed, quality), meta)


def added_ids(store: Store, workshop_id: int, label: str, seeds) -> list[int]:
    ids = []
    for seed in seeds:
        outcome = add(store, workshop_id, label, seed)
        assert outcome.ok, outcome
        ids.append(outcome.image_id)
    return ids


def is_timestamp(text: str) -> bool:
    return datetime.fromisoformat(text).tzinfo is not None


# ---------------------------------------------------------------- workshops


def test_create_workshop_records_guild_channel_host_settings_and_labels(store):
    ws = store.create_workshop("Flowers", ["sunflowers", "roses"], guild_id=1, channel_id=10, host_id=99,
                               settings={"ingest": {"min_side": 32}, "note": "été 🌻"})
    again = store.workshop(ws["id"])
    assert (again["name"], again["guild_id"], again["channel_id"], again["host_id"]) == ("Flowers", 1, 10, 99)
    assert again["settings"] == {"ingest": {"min_side": 32}, "note": "été 🌻"}
    assert again["status"] == "active" and is_timestamp(again["created_at"])
    assert store.labels(ws["id"]) == ["sunflowers", "roses"]
    assert store.ingest_limits(ws["id"]).min_side == 32


def test_workshop_name_clash_is_refused_in_any_case_and_script(store):
    store.create_workshop("Éclair")
    for name in ("Éclair", "éclair", "  ÉCLAIR "):
        with pytest.raises(ConflictError, match="already a workshop called 'Éclair'"):
            store.create_workshop(name)
    assert [w["name"] for w in store.workshops()] == ["Éclair"]


def test_channel_clash_is_refused_even_under_another_name(store):
    store.create_workshop("birds", guild_id=1, channel_id=10)
    with pytest.raises(ConflictError, match="'birds' is already running in this channel"):
        store.create_workshop("fish", guild_id=1, channel_id=10)
    store.create_workshop("fish", guild_id=1, channel_id=11)
    assert [w["name"] for w in store.workshops(guild_id=1)] == ["birds", "fish"]


def test_two_guilds_can_use_the_same_name_and_channel_ids(store):
    a = store.create_workshop("birds", guild_id=1, channel_id=10)
    b = store.create_workshop("birds", guild_id=2, channel_id=10)
    cli = store.create_workshop("birds")
    assert len({a["id"], b["id"], cli["id"]}) == 3
    assert store.find_workshop(guild_id=1, channel_id=10)["id"] == a["id"]
    assert store.find_workshop(guild_id=2, channel_id=10)["id"] == b["id"]
    assert store.find_workshop("BIRDS")["id"] == cli["id"]
    assert [w["id"] for w in store.workshops(guild_id=2)] == [b["id"]]


def test_find_workshop_says_what_to_do_when_there_is_none(store):
    with pytest.raises(NotFound, match="no workshop in this channel"):
        store.find_workshop(guild_id=1, channel_id=10)
    with pytest.raises(NotFound, match="imgcls init birds"):
        store.find_workshop("birds")
    with pytest.raises(NotFound):
        store.workshop(12345)


def test_archived_workshop_frees_its_channel_and_keeps_its_images(store):
    old = new_workshop(store, guild_id=1, channel_id=10)
    add(store, old)
    store.archive_workshop(old)
    new = new_workshop(store, guild_id=1, channel_id=10)
    assert store.find_workshop(guild_id=1, channel_id=10)["id"] == new
    assert store.workshop(old)["status"] == "archived" and is_timestamp(store.workshop(old)["archived_at"])
    assert [w["id"] for w in store.workshops(guild_id=1, include_archived=True)] == [old, new]
    assert store.counts(old)["circles"] == 1


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bad\nname"])
def test_workshop_names_must_be_short_and_printable(store, name):
    with pytest.raises(InvalidInput):
        store.create_workshop(name)


# ---------------------------------------------------------------- labels


def test_labels_keep_their_order_even_after_removals(store):
    wid = new_workshop(store, ["a", "b", "c"])
    store.add_labels(wid, ["d"])
    store.remove_label(wid, "a")
    store.remove_label(wid, "b")
    store.add_labels(wid, ["e", "f"])
    assert store.labels(wid) == ["c", "d", "e", "f"]


@pytest.mark.parametrize("first, second", [("Cats", "cats"), ("Éclair", "éclair"), ("STRASSE", "straße"),
                                           ("Ｃats", "cats")])
def test_labels_are_unique_regardless_of_case(store, first, second):
    wid = new_workshop(store, [first])
    with pytest.raises(ConflictError, match=re.escape(f"already in this workshop (as '{clean_label(first)}')")):
        store.add_labels(wid, [second])
    with pytest.raises(ConflictError):
        new_workshop(store, [first, second], name="other")
    assert store.labels(wid) == [clean_label(first)]


def test_labels_are_stored_and_compared_after_nfkc(store):
    wid = new_workshop(store, ["ｒｏｓｅｓ", "ﬁsh"])  # fullwidth letters, a ligature
    assert store.labels(wid) == ["roses", "fish"]
    assert store.resolve_label(wid, "ROSES") == "roses"
    with pytest.raises(ConflictError):
        store.add_labels(wid, ["fish"])


def test_emoji_and_any_script_are_fine_as_labels(store):
    labels = ["🌻", "🌻 sunflowers", "ひまわり", "Подсолнух", "👩‍🌾 farmer", "x" * 40, "1️⃣ one", "❤️ hearts",
              "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f scotland"]
    wid = new_workshop(store, labels)
    assert store.labels(wid) == labels
    assert add(store, wid, "🌻", kind="circles").ok
    assert store.counts(wid)["🌻"] == 1


@pytest.mark.parametrize("label", ["", "   ", "x" * 41, "cats/dogs", "cats\\dogs", "tab\there", "new\nline",
                                   "nul\x00", "zero\u200bwidth", ".", "..", "join\u200ded", "cats\u200d",
                                   "\u3164", "hangul\u3164filler", "\u2800", "soft\u00adhyphen",
                                   "word\u2060joiner", "\ufeffbom", "rtl\u202eoverride"])
def test_labels_that_could_break_paths_or_displays_are_refused(store, label):
    wid = new_workshop(store, ["ok"])
    with pytest.raises(InvalidInput):
        store.add_labels(wid, [label])
    assert store.labels(wid) == ["ok"]


def test_a_label_is_stored_trimmed_and_in_composed_form():
    assert clean_label("  e\u0301clair ") == "\u00e9clair"
    assert label_key("ÉCLAIR") == label_key("éclair") != label_key("eclair")
    assert parse_labels(" sunflowers, lavender,,roses , ") == ["sunflowers", "lavender", "roses"]


def test_more_than_twenty_labels_are_refused(store):
    too_many = [f"label {i}" for i in range(MAX_LABELS + 1)]
    with pytest.raises(InvalidInput, match=f"at most {MAX_LABELS} labels"):
        store.create_workshop("big", too_many)
    assert store.workshops() == []  # nothing half-made
    wid = new_workshop(store, too_many[:MAX_LABELS])
    with pytest.raises(InvalidInput):
        store.add_labels(wid, ["one more"])
    assert len(store.labels(wid)) == MAX_LABELS


def test_resolve_label_finds_the_workshop_spelling_in_any_case(store):
    wid = new_workshop(store, ["Éclair", "🌻 Sunflowers"])
    assert store.resolve_label(wid, "ÉCLAIR") == "Éclair"
    assert store.resolve_label(wid, " 🌻 sunflowers ") == "🌻 Sunflowers"
    with pytest.raises(NotFound, match="Labels: Éclair, 🌻 Sunflowers"):
        store.resolve_label(wid, "eclair")


def test_remove_label_soft_deletes_its_images_with_audit_rows(store):
    wid = new_workshop(store)
    circles = added_ids(store, wid, "circles", range(3))
    square = added_ids(store, wid, "squares", [10])[0]
    assert store.remove_label(wid, "CIRCLES", who="ada") == 3
    assert store.labels(wid) == ["squares", "triangles"]
    assert store.counts(wid) == {"squares": 1, "triangles": 0}
    assert [store.image(i)["status"] for i in circles] == ["deleted"] * 3
    assert store.image(square)["status"] == "active"
    rows = store.audit_log(wid)
    assert [(r["image_id"], r["action"], r["who"]) for r in rows] == [(i, "delete", "ada") for i in circles]
    assert all(r["why"] == "label 'circles' removed" for r in rows)
    assert len({r["batch"] for r in rows}) == 1


# ---------------------------------------------------------------- images


def test_add_image_records_every_metadata_field(store):
    wid = new_workshop(store)
    meta = ImageMeta(source="openverse", source_url="https://img.example/1.jpg", landing_url="https://example/1",
                     license="by-sa", license_url="https://creativecommons.org/licenses/by-sa/4.0/",
                     creator="Zoë", title="A circle", attribution='"A circle" by Zoë, CC BY-SA', added_by="host#1")
    outcome = store.add_image(wid, "Circles", ingested(store, wid), meta)
    assert outcome.ok
    row = store.image(outcome.image_id)
    assert {k: row[k] for k in vars(meta)} == vars(meta)
    assert (row["sha256"], row["phash"], row["path"]) == (outcome.sha256, outcome.phash, outcome.path)
    assert (row["width"], row["height"], row["bytes"]) == (96, 96, outcome.nbytes)
    assert row["label"] == "circles" and row["status"] == "active" and row["status_reason"] is None
    assert is_timestamp(row["added_at"])
    stored = store.image_path(row)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
    assert stored.relative_to(store.images_dir).as_posix() == f"{row['sha256'][:2]}/{row['sha256']}.jpg"


def test_refused_images_are_recorded_as_rejects_by_reason(store):
    wid = new_workshop(store)
    meta = ImageMeta(source="upload", source_url="cat.txt", added_by="bob")
    outcomes = [store.add_image(wid, "circles", ingest(data, store.images_dir), meta)
                for data in (b"hello, I am text", b"", jpeg_bytes(make_image("circles", 1, size=32)),
                             jpeg_bytes(make_image("circles", 2))[:300])]
    assert [o.reason for o in outcomes] == ["not_image", "not_image", "too_small", "corrupt"]
    assert store.reject_counts(wid) == {"not_image": 2, "too_small": 1, "corrupt": 1}
    rows = store._rows("SELECT * FROM rejects WHERE workshop_id = ? ORDER BY id", [wid])
    assert [(r["label"], r["source_url"], r["added_by"]) for r in rows] == [("circles", "cat.txt", "bob")] * 4
    assert rows[2]["detail"] == outcomes[2].detail and "32×32" in rows[2]["detail"]
    assert store.images(wid) == [] and store.counts(wid)["circles"] == 0


def test_an_image_for_an_unknown_label_is_refused_and_its_file_swept(store):
    wid = new_workshop(store)
    outcome = ingested(store, wid)
    with pytest.raises(NotFound):
        store.add_image(wid, "dogs", outcome)
    assert store.sweep_orphans(min_age_seconds=0) == 1
    assert store.images(wid, status=None) == []


def test_exact_duplicate_is_caught_by_the_store_without_known_hashes(store):
    wid = new_workshop(store)
    first = add(store, wid, seed=1)
    again = ingested(store, wid, seed=1)  # as in a parallel ingest: ingest knew no hashes
    assert again.ok and again.path == first.path
    outcome = store.add_image(wid, "squares", again)
    assert (outcome.ok, outcome.reason, outcome.duplicate_of) == (False, "duplicate", first.image_id)
    assert outcome.sha256 == first.sha256 and outcome.phash == first.phash and outcome.path is None
    assert (store.images_dir / first.path).exists()  # the first image still uses the file
    assert store.counts(wid) == {"circles": 1, "squares": 0, "triangles": 0}
    reject = store._one("SELECT * FROM rejects WHERE workshop_id = ?", [wid])
    assert (reject["reason"], reject["label"], reject["duplicate_of"]) == ("duplicate", "squares", first.image_id)


def test_near_duplicate_is_caught_by_the_store_and_its_file_swept_later(store):
    wid = new_workshop(store)
    first = add(store, wid, seed=1, quality=95)
    near = ingested(store, wid, seed=1, quality=40)
    assert near.ok and near.sha256 != first.sha256 and (store.images_dir / near.path).exists()
    outcome = store.add_image(wid, "circles", near)
    assert (outcome.ok, outcome.reason, outcome.duplicate_of) == (False, "near_duplicate", first.image_id)
    assert store.reject_counts(wid) == {"near_duplicate": 1}
    # kept for now: another workshop's ingest may be about to record the same file
    assert store.sweep_orphans(min_age_seconds=3600) == 0 and (store.images_dir / near.path).exists()
    assert store.sweep_orphans(min_age_seconds=0) == 1
    assert not (store.images_dir / near.path).exists()
    assert (store.images_dir / first.path).exists()


def test_sweeping_keeps_a_file_another_workshop_uses(store):
    one, two = new_workshop(store, name="one"), new_workshop(store, name="two")
    shared = add(store, one, seed=1, quality=95)
    assert add(store, two, seed=1, quality=40).ok  # a near-duplicate of `shared` owns workshop two's slot
    outcome = store.add_image(two, "circles", ingested(store, two, seed=1, quality=95))
    assert outcome.reason == "near_duplicate"
    store.sweep_orphans(min_age_seconds=0)
    assert store.image_path(store.image(shared.image_id)).read_bytes()


def test_the_same_image_may_be_in_two_workshops(store):
    one, two = new_workshop(store, name="one"), new_workshop(store, name="two")
    a, b = add(store, one, seed=3), add(store, two, seed=3)
    assert a.ok and b.ok and a.path == b.path and a.image_id != b.image_id


def test_duplicates_refused_by_ingest_point_at_the_original(store):
    wid = new_workshop(store)
    first = add(store, wid, seed=1, quality=95)
    shas, phashes = store.known_hashes(wid)
    exact = ingested(store, wid, seed=1, quality=95, known_sha256=shas, known_phashes=phashes)
    near = ingested(store, wid, seed=1, quality=40, known_sha256=shas, known_phashes=phashes)
    assert (exact.reason, near.reason, exact.duplicate_of, near.duplicate_of) == ("duplicate", "near_duplicate",
                                                                                  None, None)
    assert store.add_image(wid, "circles", exact).duplicate_of == first.image_id
    assert store.add_image(wid, "circles", near).duplicate_of == first.image_id
    rows = store._rows("SELECT reason, duplicate_of FROM rejects WHERE workshop_id = ? ORDER BY id", [wid])
    assert rows == [{"reason": "duplicate", "duplicate_of": first.image_id},
                    {"reason": "near_duplicate", "duplicate_of": first.image_id}]


def test_a_deleted_image_added_again_is_still_a_duplicate(store):
    wid = new_workshop(store)
    first = add(store, wid, seed=1)
    store.delete_image(wid, first.image_id, who="ada", why="blurry")
    shas, phashes = store.known_hashes(wid)
    assert first.sha256 in shas and first.phash not in phashes
    outcome = add(store, wid, seed=1)
    assert (outcome.reason, outcome.duplicate_of) == ("duplicate", first.image_id)
    assert "deleted earlier" in outcome.detail
    assert (store.images_dir / first.path).exists()


# ---------------------------------------------------------------- soft delete, relabel, audit


def test_soft_delete_keeps_the_row_and_the_file(store):
    wid = new_workshop(store)
    keep, gone = added_ids(store, wid, "circles", [1, 2])
    change = store.delete_image(wid, gone, who="ada", why="a drawing, not a photo")
    row = store.image(gone)
    assert (row["status"], row["status_reason"]) == ("deleted", "a drawing, not a photo")
    assert store.image_path(row).exists()
    assert store.counts(wid)["circles"] == 1
    assert [r["id"] for r in store.images(wid)] == [keep]
    assert [r["id"] for r in store.images(wid, status="deleted")] == [gone]
    assert [r["id"] for r in store.images(wid, label="CIRCLES", status=None)] == [keep, gone]
    assert store.audit_log(wid)[0]["id"] == change
    with pytest.raises(ConflictError, match="already deleted"):
        store.delete_image(wid, gone)


def test_images_of_another_workshop_cannot_be_touched(store):
    one, two = new_workshop(store, name="one"), new_workshop(store, name="two")
    image_id = added_ids(store, one, "circles", [1])[0]
    with pytest.raises(NotFound):
        store.delete_image(two, image_id)
    with pytest.raises(NotFound):
        store.relabel(two, image_id, "squares")
    assert store.image(image_id)["status"] == "active" and store.audit_log(two) == []


def test_relabel_moves_an_image_between_labels(store):
    wid = new_workshop(store)
    image_id = added_ids(store, wid, "circles", [1])[0]
    store.relabel(wid, image_id, "SQUARES", who="ada", why="it is square")
    assert store.image(image_id)["label"] == "squares"
    assert store.counts(wid) == {"circles": 0, "squares": 1, "triangles": 0}
    with pytest.raises(ConflictError, match="already labelled"):
        store.relabel(wid, image_id, "squares")
    with pytest.raises(NotFound):
        store.relabel(wid, image_id, "hexagons")
    store.delete_image(wid, image_id)
    with pytest.raises(ConflictError, match="undo the delete"):
        store.relabel(wid, image_id, "circles")


def test_audit_rows_say_who_when_old_new_and_why(store):
    wid = new_workshop(store)
    a, b = added_ids(store, wid, "circles", [1, 2])
    relabel = store.relabel(wid, a, "triangles", who="ada", why="three corners")
    delete = store.delete_image(wid, b, who="bob", why="blurry")
    rows = store.audit_log(wid)
    assert [r["id"] for r in rows] == [relabel, delete]
    picked = [{k: r[k] for k in ("image_id", "action", "field", "old", "new", "who", "why", "undone_by")}
              for r in rows]
    assert picked == [
        {"image_id": a, "action": "relabel", "field": "label", "old": "circles", "new": "triangles",
         "who": "ada", "why": "three corners", "undone_by": None},
        {"image_id": b, "action": "delete", "field": "status", "old": "active", "new": "deleted",
         "who": "bob", "why": "blurry", "undone_by": None},
    ]
    assert all(is_timestamp(r["at"]) for r in rows)


# ---------------------------------------------------------------- undo


def test_undo_restores_a_whole_delete_batch_together(store):
    wid = new_workshop(store)
    ids = added_ids(store, wid, "circles", range(4))
    store.delete_image(wid, ids[0], who="ada")
    store.delete_images(wid, ids[1:], who="ada", why="wrong class")
    assert store.counts(wid)["circles"] == 0
    undone = store.undo(wid, who="bob")
    assert len(undone) == 3
    assert [store.image(i)["status"] for i in ids] == ["deleted", "active", "active", "active"]
    assert all(store.image(i)["status_reason"] is None for i in ids[1:])
    store.undo(wid)  # then the single delete before it
    assert store.counts(wid)["circles"] == 4
    with pytest.raises(NotFound, match="nothing to undo"):
        store.undo(wid)


def test_undo_reverses_only_the_last_change(store):
    wid = new_workshop(store)
    a, b = added_ids(store, wid, "circles", [1, 2])
    store.relabel(wid, a, "squares")
    store.relabel(wid, b, "triangles")
    store.undo(wid)
    assert (store.image(a)["label"], store.image(b)["label"]) == ("squares", "circles")


def test_undo_of_a_named_change(store):
    wid = new_workshop(store)
    a, b = added_ids(store, wid, "circles", [1, 2])
    first = store.relabel(wid, a, "squares")
    store.delete_image(wid, b)
    store.undo(wid, first, who="ada")
    assert (store.image(a)["label"], store.image(b)["status"]) == ("circles", "deleted")
    with pytest.raises(ConflictError, match="undone already"):
        store.undo(wid, first)
    with pytest.raises(NotFound):
        store.undo(wid, 9999)


def test_undo_refuses_when_the_image_changed_again_since(store):
    wid = new_workshop(store)
    image_id = added_ids(store, wid, "circles", [1])[0]
    first = store.relabel(wid, image_id, "squares")
    store.relabel(wid, image_id, "triangles")
    with pytest.raises(ConflictError, match="changed again"):
        store.undo(wid, first)
    assert store.image(image_id)["label"] == "triangles"
    assert store.audit_log(wid)[0]["undone_by"] is None  # the refused undo left no trace


def test_undo_with_nothing_to_undo(store):
    wid = new_workshop(store)
    added_ids(store, wid, "circles", [1])
    with pytest.raises(NotFound, match="nothing to undo"):
        store.undo(wid)


def test_the_undo_itself_is_audited(store):
    wid = new_workshop(store)
    image_id = added_ids(store, wid, "circles", [1])[0]
    change = store.delete_image(wid, image_id, who="ada", why="blurry")
    [undo_id] = store.undo(wid, who="bob", why="it was fine")
    original, undo = store.audit_log(wid)
    assert original["id"] == change and original["undone_by"] == undo_id
    picked = {k: undo[k] for k in ("id", "image_id", "action", "field", "old", "new", "who", "why", "undoes")}
    assert picked == {"id": undo_id, "image_id": image_id, "action": "undo", "field": "status", "old": "deleted",
                      "new": "active", "who": "bob", "why": "it was fine", "undoes": change}
    assert is_timestamp(undo["at"])
    with pytest.raises(ConflictError):
        store.undo(wid, undo_id)  # an undo is not undone; delete again instead


def test_undo_into_a_removed_label_waits_until_it_is_back(store):
    wid = new_workshop(store)
    circle, square = added_ids(store, wid, "circles", [1, 2])
    store.relabel(wid, square, "squares")
    store.remove_label(wid, "circles")
    with pytest.raises(ConflictError, match="add the label back"):
        store.undo(wid)  # the images deleted with the label
    with pytest.raises(ConflictError, match="add the label back"):
        store.undo(wid, store.audit_log(wid)[0]["id"])  # squares -> circles
    assert store.image(circle)["status"] == "deleted" and store.image(square)["label"] == "squares"
    store.add_labels(wid, ["Circles"])
    store.undo(wid)
    assert store.image(circle)["status"] == "active" and store.image(circle)["label"] == "Circles"
    assert store.counts(wid)["Circles"] == 1


# ---------------------------------------------------------------- runs


def train_result(run_id: int, items: list[tuple[int, str]]) -> TrainResult:
    (a, _), (b, _), (c, _), (d, _) = items
    return TrainResult(
        run_id=run_id, arch="lite0", device="cpu", labels=("circles", "squares"),
        epochs=(EpochMetrics(0, "frozen", 1.25, 0.9, 0.5, 1.5), EpochMetrics(1, "unfrozen", 0.7, 0.45, 1.0, 1.25)),
        accuracy=1.0, valid_loss=0.45, confusion=((1, 0), (0, 1)), most_confused=(("circles", "squares", 0),),
        top_losses=(TopLoss(b, "/data/images/x.jpg", "circles", "squares", 0.75, 1.5),),
        split=((a, False), (b, True), (c, False), (d, True)),
        valid_predictions=((b, "circles", 0.75), (d, "squares", 0.5)),
        model_path=f"/data/runs/{run_id}/model.pkl", model_sha256="ab" * 32,
        artefacts=(("confusion.png", f"/data/runs/{run_id}/confusion.png"),), seconds=2.75, n_train=2, n_valid=2,
    )


def test_a_run_goes_from_queued_to_running_to_done(store):
    wid = new_workshop(store)
    items = [(i, "circles") for i in added_ids(store, wid, "circles", [1, 2])]
    items += [(i, "squares") for i in added_ids(store, wid, "squares", [3, 4])]
    params = {"arch": "lite0", "epochs": 2, "valid_pct": 0.5, "note": "première 🌻"}
    run_id = store.create_run(wid, params, requested_by="ada")
    run = store.run(run_id)
    assert (run["status"], run["params"], run["requested_by"]) == ("queued", params, "ada")
    assert is_timestamp(run["created_at"]) and run["started_at"] is None
    store.record_snapshot(run_id, iter(items))
    store.mark_run(run_id, "running")
    running = store.run(run_id)
    assert running["status"] == "running" and is_timestamp(running["started_at"])
    assert running["finished_at"] is None

    store.finish_run(run_id, train_result(run_id, items))
    done = store.run(run_id)
    assert done["status"] == "done" and done["error"] is None
    assert done["started_at"] == running["started_at"] and done["finished_at"] >= done["started_at"]
    assert done["snapshot"] == {"items": [list(i) for i in items],
                                "split": [[items[0][0], False], [items[1][0], True], [items[2][0], False],
                                          [items[3][0], True]]}
    assert done["labels"] == ["circles", "squares"]
    assert [e["accuracy"] for e in done["epochs"]] == [0.5, 1.0] and done["epochs"][0]["phase"] == "frozen"
    assert done["metrics"] == {"accuracy": 1.0, "valid_loss": 0.45, "seconds": 2.75, "n_train": 2, "n_valid": 2}
    assert done["confusion"] == [[1, 0], [0, 1]]
    assert done["most_confused"] == [["circles", "squares", 0]]
    assert done["top_losses"] == [{"image_id": items[1][0], "path": "/data/images/x.jpg", "actual": "circles",
                                   "predicted": "squares", "probability": 0.75, "loss": 1.5}]
    assert done["valid_predictions"] == [[items[1][0], "circles", 0.75], [items[3][0], "squares", 0.5]]
    assert (done["model_path"], done["model_sha256"]) == (f"/data/runs/{run_id}/model.pkl", "ab" * 32)
    assert done["artefacts"] == {"confusion.png": f"/data/runs/{run_id}/confusion.png"}
    assert done["device"] == "cpu"
    assert store.latest_run(wid)["id"] == run_id
    assert [r["id"] for r in store.runs(wid, status="done")] == [run_id]


def test_recording_the_snapshot_after_finishing_keeps_the_split(store):
    wid = new_workshop(store)
    items = [(i, "circles") for i in added_ids(store, wid, "circles", range(4))]
    run_id = store.create_run(wid, {})
    store.finish_run(run_id, train_result(run_id, items))
    store.record_snapshot(run_id, items)
    snapshot = store.run(run_id)["snapshot"]
    assert set(snapshot) == {"items", "split"} and len(snapshot["split"]) == 4


def test_a_failed_run_keeps_its_error_text(store):
    wid = new_workshop(store)
    run_id = store.create_run(wid, {"arch": "resnet18"})
    store.mark_run(run_id, "running")
    store.mark_run(run_id, "failed", error="CUDA out of memory; try a smaller batch size")
    run = store.run(run_id)
    assert (run["status"], run["error"]) == ("failed", "CUDA out of memory; try a smaller batch size")
    assert is_timestamp(run["finished_at"]) and run["model_path"] is None
    with pytest.raises(NotFound, match="no finished training run"):
        store.latest_run(wid)
    assert store.latest_run(wid, status="failed")["id"] == run_id


def test_runs_left_queued_or_running_are_marked_interrupted(store):
    wid = new_workshop(store)
    queued, running, failed = (store.create_run(wid, {}) for _ in range(3))
    store.mark_run(running, "running")
    store.mark_run(failed, "failed", error="boom")
    assert sorted(r["id"] for r in store.interrupted_runs()) == [queued, running]
    assert [store.run(i)["status"] for i in (queued, running, failed)] == ["interrupted", "interrupted", "failed"]
    assert "stopped" in store.run(running)["error"] and store.run(failed)["error"] == "boom"
    assert store.interrupted_runs() == []


def test_run_bookkeeping_refuses_unknown_runs_and_statuses(store):
    wid = new_workshop(store)
    run_id = store.create_run(wid, {})
    with pytest.raises(InvalidInput):
        store.mark_run(run_id, "exploded")
    for call in (lambda: store.mark_run(999, "running"), lambda: store.record_snapshot(999, [(1, "x")]),
                 lambda: store.run(999), lambda: store.create_run(999, {})):
        with pytest.raises(NotFound):
            call()
    assert store.run_dir(run_id).is_dir() and store.run_dir(run_id) == store.runs_dir / str(run_id)


def test_the_database_is_in_wal_mode(store):
    conn = sqlite3.connect(store.data_dir / "workshops.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


# ---------------------------------------------------------------- several processes at once

ROUNDS = 60


def fake_outcome(tag: str, i: int) -> IngestOutcome:
    sha = hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()
    phash = hashlib.sha256(f"phash-{tag}-{i}".encode()).hexdigest()[:16]
    return IngestOutcome(ok=True, sha256=sha, phash=phash, path=f"{sha[:2]}/{sha}.jpg", width=64, height=64, nbytes=999)


def write_a_lot(data_dir: str, tag: str, barrier) -> None:
    """One process's share: open the store at the same moment as the other, then write.

    Any exception ('database is locked' included) is written to <data_dir>/../<tag>.error, and the
    times it started and finished to <tag>.times."""
    try:
        barrier.wait(timeout=60)
        started = time.time()
        store = Store(data_dir)
        try:
            wid = store.create_workshop("shared", ["x", "y"])["id"]
        except ConflictError:
            wid = store.find_workshop("shared")["id"]
        store.add_image(wid, "x", fake_outcome("both", 0), ImageMeta(added_by=tag))  # one of the two is a duplicate
        for i in range(ROUNDS):
            store.create_workshop(f"{tag}-{i}", [f"label {i}"], guild_id=7, channel_id=f"{ord(tag)}{i:04d}")
            image_id = store.add_image(wid, "x", fake_outcome(tag, i), ImageMeta(added_by=tag)).image_id
            if i % 3 == 0:
                store.relabel(wid, image_id, "y", who=tag)
            if i % 5 == 0:
                change = store.delete_image(wid, image_id, who=tag)
                if i % 10 == 0:
                    store.undo(wid, change, who=tag)
        store.close()
        (Path(data_dir).parent / f"{tag}.times").write_text(f"{started} {time.time()}")
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        (Path(data_dir).parent / f"{tag}.error").write_text(traceback.format_exc())
        raise


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, data_dir = ctx.Barrier(2), str(tmp_path / "data")
    workers = [ctx.Process(target=write_a_lot, args=(data_dir, tag, barrier)) for tag in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():
            w.kill()
    assert [p.read_text() for p in sorted(tmp_path.glob("*.error"))] == []
    assert [w.exitcode for w in workers] == [0, 0]

    store = Store(data_dir)
    try:
        assert store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert len(store.workshops(guild_id=7)) == 2 * ROUNDS
        wid = store.find_workshop("shared")["id"]
        images = store.images(wid, status=None)
        assert len(images) == 2 * ROUNDS + 1 and store.reject_counts(wid) == {"duplicate": 1}
        by_tag = {tag: [r for r in images if r["added_by"] == tag] for tag in ("a", "b")}
        for tag, rows in by_tag.items():
            rows = [r for r in rows if r["sha256"] != fake_outcome("both", 0).sha256]
            assert len(rows) == ROUNDS
            deleted = {i for i in range(ROUNDS) if i % 5 == 0 and i % 10 != 0}
            relabelled = {i for i in range(ROUNDS) if i % 3 == 0}
            for i, row in enumerate(rows):
                assert row["sha256"] == fake_outcome(tag, i).sha256
                assert row["status"] == ("deleted" if i in deleted else "active"), (tag, i)
                assert row["label"] == ("y" if i in relabelled else "x"), (tag, i)
        audit = store.audit_log(wid)
        per_process = ROUNDS // 3 + ROUNDS // 5 + ROUNDS // 10
        assert sorted(r["who"] for r in audit) == ["a"] * per_process + ["b"] * per_process
        assert sum(r["action"] == "undo" for r in audit) == 2 * (ROUNDS // 10)
        # The two really were at it at the same time (SQLite's busy handler makes the rows themselves
        # come in long runs: a waiting writer backs off for up to 100 ms).
        (a_start, a_end), (b_start, b_end) = (map(float, (tmp_path / f"{t}.times").read_text().split()) for t in "ab")
        assert max(a_start, b_start) < min(a_end, b_end)
    finally:
        store.close()


def test_a_store_row_survives_json_round_trips(store):
    settings = {"ingest": {"near_duplicate_distance": 2}, "names": ["Zoë", "🌻"], "nested": {"a": [1, 2.5, None]}}
    wid = new_workshop(store, settings=settings)
    assert store.workshop(wid)["settings"] == settings
    assert store.ingest_limits(wid).near_duplicate_distance == 2
    params = {"arch": "resnet34", "size": 192, "augment": False, "tags": ["a", "ü"]}
    assert store.run(store.create_run(wid, params))["params"] == params


def test_search_responses_are_cached_per_provider_query_page_and_params(store):
    assert store.cached_search("openverse", "roses", 1) is None
    store.cache_search("openverse", "roses", 1, {"results": [{"id": "a"}]})
    store.cache_search("openverse", "roses", 2, {"results": []})
    store.cache_search("openverse", "roses", 1, {"results": [{"id": "b"}]}, params="license_type=all")
    assert store.cached_search("openverse", "roses", 1) == {"results": [{"id": "a"}]}
    assert store.cached_search("openverse", "roses", 1, params="license_type=all") == {"results": [{"id": "b"}]}
    assert store.cached_search("wikimedia", "roses", 1) is None


def test_attempted_urls_skip_stored_and_final_refusals_but_retry_transient_ones(store):
    wid = new_workshop(store)
    ok = store.add_image(wid, "circles", ingested(store, wid, seed=5), ImageMeta(source="openverse", source_url="https://a/1.jpg"))
    assert ok.ok
    for url, reason in [("https://a/2.jpg", "not_image"), ("https://a/3.jpg", "timeout"),
                        ("https://a/4.jpg", "http_status"), ("https://a/5.jpg", "blocked")]:
        store.record_reject(wid, "circles", reason, "x", ImageMeta(source="openverse", source_url=url))
    assert store.attempted_urls(wid) == {"https://a/1.jpg", "https://a/2.jpg", "https://a/5.jpg"}
    assert store.attempted_urls(new_workshop(store, name="other")) == set()


def test_an_old_orphan_ingested_again_is_not_swept_before_it_is_recorded(store):
    import os

    one, two = new_workshop(store, name="one"), new_workshop(store, name="two")
    add(store, one, seed=1, quality=95)
    orphan = ingested(store, one, seed=1, quality=40)  # refused below as a near duplicate: its file is an orphan
    assert store.add_image(one, "circles", orphan).reason == "near_duplicate"
    old = time.time() - 7200
    os.utime(store.images_dir / orphan.path, (old, old))
    again = ingested(store, two, seed=1, quality=40)  # workshop two ingests the same picture: same file
    assert again.path == orphan.path
    assert store.sweep_orphans(min_age_seconds=3600) == 0  # it was just used, so it is not swept
    assert store.add_image(two, "circles", again).ok
    assert store.image_path(store.image(store.images(two)[0]["id"])).exists()


@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "\u2067isolated\u2069", "mark\u200fname"])
def test_workshop_names_with_text_direction_controls_are_refused(store, name):
    with pytest.raises(InvalidInput, match="text-direction"):
        store.create_workshop(name, ["a", "b"])
