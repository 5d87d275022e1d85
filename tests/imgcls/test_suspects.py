"""Suspects across the whole dataset: out-of-fold checks in the training job, ranked by cleanlab, stored with
the run, and picked for a vote by the rules a workshop expects."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from imgcls.cleaning import CleaningBoard
from imgcls.collect import add_files, folder_files
from imgcls.errors import NotFound
from imgcls.jobs import ProcessJobExecutor
from imgcls.runs import RunParams, prepare_run, train_workshop
from imgcls.scoring import folds_for, out_of_fold
from imgcls.store import Store
from imgcls.suspects import MUCH_WORSE, SuspectBook, explain, ranked
from imgcls.types import ImageMeta, ImageScore, TrainItem, TrainSpec

from ..conftest import jpeg_bytes, write_image_folders

LABELS = ["circles", "squares", "triangles"]


@dataclass
class Noisy:
    store: Store
    workshop_id: int
    flipped: dict[int, bool]  # image id -> on the validation side
    run: dict
    mirrored: tuple[int, int]  # (original, its mirror image): perceptual hashes miss it
    off_topic: int  # a page of text among the shapes


def page_of_text(seed: int) -> bytes:
    """A screenshot-like picture: lines of dark 'text' on white, nothing like a shape on a coloured ground."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    im = Image.new("RGB", (96, 96), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    for y in range(6, 90, 9):
        x = 4
        while x < 88:
            w = rng.randint(4, 14)
            draw.rectangle((x, y, min(x + w, 92), y + 4), fill=(30, 30, 30))
            x += w + 3
    return jpeg_bytes(im)


def noisy_workshop(root, per_label: int, flips_per_side: int) -> tuple[Store, int, dict[int, bool]]:
    """Generated shapes with some labels flipped to the next label, on both sides of the split."""
    photos = write_image_folders(root / "photos", per_label=per_label, size=96, seed=3)
    store = Store(root / "data")
    wid = store.create_workshop("noisy", LABELS)["id"]
    add_files(store, wid, folder_files(photos, LABELS), meta=ImageMeta(source="folder", added_by="tester"))
    _, spec = prepare_run(store, wid, RunParams(seed=42))  # the sides the runs will use
    store.mark_run(spec.run_id, "cancelled")
    flipped: dict[int, bool] = {}
    for side in (True, False):
        picked = [i for i in spec.items if i.valid is side][::7][:flips_per_side]
        for item in picked:
            store.relabel(wid, item.image_id, LABELS[(LABELS.index(item.label) + 1) % 3], who="tester")
            flipped[item.image_id] = side
    return store, wid, flipped


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Noisy:
    root = tmp_path_factory.mktemp("noisy")
    store, wid, flipped = noisy_workshop(root, per_label=20, flips_per_side=2)
    from PIL import Image, ImageOps

    original = store.images(wid, label="squares")[3]
    with Image.open(store.image_path(original)) as im:
        mirror = jpeg_bytes(ImageOps.mirror(im.convert("RGB")))
    extra = root / "extra" / "squares"
    extra.mkdir(parents=True)
    (extra / "mirror.jpg").write_bytes(mirror)
    (extra / "text.jpg").write_bytes(page_of_text(1))
    added = add_files(store, wid, [("squares", extra / "mirror.jpg"), ("squares", extra / "text.jpg")],
                      meta=ImageMeta(source="folder", added_by="tester"))
    assert all(a.outcome.ok for a in added), [a.outcome for a in added]  # ingest's hash check lets both in
    run = train_workshop(store, wid, RunParams(arch="lite0", epochs=1, size=64, bs=16, suspects="embed"),
                         ProcessJobExecutor(), timeout=300)
    assert run["status"] == "done", run["error"]
    yield Noisy(store, wid, flipped, run, (original["id"], added[0].outcome.image_id), added[1].outcome.image_id)
    store.close()


def test_every_image_is_scored_and_flipped_ones_rank_first_from_both_sides(noisy):
    book = SuspectBook(noisy.store)
    scores = book.scores(noisy.run["id"])
    assert {s.image_id for s in scores} == {r["id"] for r in noisy.store.images(noisy.workshop_id)}
    assert len(scores) == 62
    assert noisy.run["scoring"]["method"] == "embed" and noisy.run["scoring"]["scored"] == len(scores)
    ranking = [s.image_id for s in book.ranking(noisy.run["id"]) if s.kind == "label"]
    top = ranking[: len(noisy.flipped) + 2]
    assert set(noisy.flipped) <= set(top), (top, noisy.flipped)
    sides = {s.image_id: s.valid for s in scores}
    assert {sides[i] for i in noisy.flipped} == {True, False}  # candidates now reach the training side too
    split = dict(map(tuple, noisy.run["snapshot"]["split"]))
    assert all(sides[i] == split[i] for i in sides)
    first = next(s for s in book.ranking(noisy.run["id"]) if s.kind == "label")
    assert first.reason.startswith(f"labelled *{first.label}*; the model is ")


def test_off_topic_images_and_near_duplicates_are_suspects_too(noisy):
    by_id = {s.image_id: s for s in SuspectBook(noisy.store).ranking(noisy.run["id"])}
    original, mirror = noisy.mirrored
    assert mirror in by_id and "duplicate" in by_id[mirror].kinds, by_id.get(mirror)
    assert by_id[mirror].duplicate_of == original and f"almost the same as image {original}" in by_id[mirror].reason
    assert original not in by_id or "duplicate" not in by_id[original].kinds  # the older one stays
    assert noisy.off_topic in by_id, "the page of text among shapes was not flagged"
    assert set(by_id[noisy.off_topic].kinds) & {"outlier", "label"}


def test_pick_gives_as_many_as_asked_and_says_when_fewer_exist(noisy):
    book = SuspectBook(noisy.store)
    total = len(book.ranking(noisy.run["id"]))
    some = book.pick(noisy.workshop_id, 3)
    assert len(some.suspects) == 3 and not some.short and some.available == total
    everything = book.pick(noisy.workshop_id, total + 10)
    assert len(everything.suspects) == total and everything.short and everything.asked == total + 10
    assert [s.score for s in everything.suspects] == sorted(s.score for s in everything.suspects)


def test_pick_leaves_out_deleted_relabelled_open_and_kept_images(tmp_path):
    store = Store(tmp_path / "d")
    wid = store.create_workshop("w", LABELS)["id"]
    from tests.imgcls.test_store import added_ids

    ids = added_ids(store, wid, "circles", range(6))
    run_id = store.create_run(wid, {})
    store.mark_run(run_id, "done")
    book = SuspectBook(store)
    book.record(run_id, [ImageScore(i, "circles", "squares", 0.95, 0.05, 0.05 + n / 100, True, valid=bool(n % 2))
                         for n, i in enumerate(ids)])
    assert [s.image_id for s in book.pick(wid, 10).suspects] == ids

    store.delete_image(wid, ids[0])
    store.relabel(wid, ids[1], "squares")
    board = CleaningBoard(store)
    undecided = board.add_candidate(wid, run_id, ids[2], predicted="squares", score=0.07)
    kept = board.add_candidate(wid, run_id, ids[3], predicted="squares", score=0.08)
    board.set_votes(kept, {"a": ["keep"], "b": ["keep"]})
    board.set_votes(undecided, {"a": ["delete"]})
    board.apply(wid, quorum=2)  # the group kept image 3; image 2 had no quorum, so nothing was decided
    board.add_candidate(wid, run_id, ids[4], predicted="squares", score=0.09)  # open
    assert [s.image_id for s in book.pick(wid, 10).suspects] == [ids[2], ids[5]]

    # a later run that scores a kept image much worse puts it up again; a little worse does not
    later = store.create_run(wid, {})
    store.mark_run(later, "done")
    book.record(later, [ImageScore(ids[3], "circles", "squares", 0.97, 0.03, 0.08 * MUCH_WORSE - 0.001, True)])
    assert [s.image_id for s in book.pick(wid, 10).suspects] == [ids[3]]
    book.record(later, [ImageScore(ids[3], "circles", "squares", 0.95, 0.05, 0.08 * MUCH_WORSE + 0.01, True)])
    assert book.pick(wid, 10).suspects == ()
    # a new reason (now almost the same as another image) puts it up again too
    book.record(later, [ImageScore(ids[3], "circles", "circles", 0.9, 0.9, 0.9, False, duplicate_of=ids[5],
                                   duplicate_score=0.1)])
    assert [s.kind for s in book.pick(wid, 10).suspects] == ["duplicate"]
    # a restart reads the same suspects
    book.record(later, [ImageScore(ids[3], "circles", "squares", 0.99, 0.01, 0.01, True)])
    again = Store(tmp_path / "d")
    assert [s.image_id for s in SuspectBook(again).pick(wid, 10).suspects] == [ids[3]]
    again.close()
    store.close()


def test_a_run_that_checked_nothing_says_how_to_get_suspects(store):
    from tests.imgcls.test_store import added_ids

    wid = store.create_workshop("w", LABELS)["id"]
    added_ids(store, wid, "circles", range(2))
    with pytest.raises(NotFound, match="train"):
        SuspectBook(store).pick(wid, 5)
    run_id = store.create_run(wid, {})
    store.mark_run(run_id, "done")
    with pytest.raises(NotFound, match="did not check"):
        SuspectBook(store).pick(wid, 5)


def test_reasons_are_in_plain_words():
    wrong = ImageScore(12, "bird", "fruit", 0.91, 0.05, 0.05, True)
    unsure = ImageScore(13, "bird", "bird", 0.4, 0.4, 0.2, True)
    odd = ImageScore(14, "bird", "bird", 0.9, 0.9, 0.9, False, outlier_score=0.01, outlier=True)
    twin = ImageScore(15, "bird", "bird", 0.9, 0.9, 0.9, False, duplicate_of=12, duplicate_score=0.02)
    assert explain(wrong, ["label"]) == "labelled *bird*; the model is 91% sure it is *fruit*"
    assert explain(unsure, ["label"]) == "labelled *bird*, but the model is only 40% sure of that"
    assert [s.reason for s in ranked([odd, twin])] == ["unlike the other images (is it off-topic?)",
                                                        "almost the same as image 12"]
    assert ranked([ImageScore(16, "bird", "bird", 0.9, 0.9, 0.95, False)]) == []  # nothing wrong with it


def test_k_fold_never_scores_an_image_with_a_model_that_trained_on_it():
    items = tuple(TrainItem(i, f"/img/{i}.jpg", LABELS[i % 3], valid=i % 5 == 0) for i in range(45))
    spec = TrainSpec(items=items, labels=tuple(LABELS), out_dir="", folds=4)
    fold = folds_for(items, 4, seed=42)
    assert all((fold[i] == 0) == item.valid for i, item in enumerate(items))
    for f in (1, 2, 3):  # each fold holds out a share of every label
        assert {items[i].label for i in range(45) if fold[i] == f} == set(LABELS)
    held_out: list[int] = []

    def row(image_id: int) -> np.ndarray:  # a row that says which image it belongs to
        return np.array([image_id, 1000 - image_id, 1.0])

    def fit_fold(held):
        trained_on = [item.image_id for item, h in zip(items, held) if not h]
        scored = [item.image_id for item, h in zip(items, held) if h]
        assert len(trained_on) + len(scored) == len(items)
        held_out.extend(scored)
        return np.stack([row(i) for i in scored])

    valid_probs = {i.image_id: row(i.image_id) for i in items if i.valid}
    probs = out_of_fold(spec, "kfold", valid_probs=valid_probs, insample_probs=None, features=None,
                        fit_fold=fit_fold, emit=lambda e: None)
    assert sorted(held_out + list(valid_probs)) == [i.image_id for i in items]  # each image held out exactly once
    for item, got in zip(items, probs):  # and its row is the one from the model that did not train on it
        assert list(got) == list(row(item.image_id)), item
    # the training side is split three ways, the validation side is the run's own model
    assert len(held_out) == sum(not i.valid for i in items)


@pytest.mark.parametrize("method", ["kfold", "insample"])
def test_the_other_methods_run_in_the_job(tmp_path, method):
    store, wid, flipped = noisy_workshop(tmp_path, per_label=10, flips_per_side=1)
    events = []
    run = train_workshop(store, wid, RunParams(arch="lite0", epochs=1, freeze_epochs=0, size=64, bs=16,
                                               suspects=method, folds=3), ProcessJobExecutor(), timeout=300,
                         progress=events.append)
    assert run["status"] == "done", run["error"]
    stages = [e.message for e in events if e.kind == "stage"]
    assert "ranking the suspects (cleanlab)" in stages
    if method == "kfold":  # the extra fine-tunes say how far they are
        assert "checking every image's label: extra model 2 of 2, epoch 1 of 1" in stages, stages
    assert run["scoring"]["method"] == method and run["scoring"]["scored"] == 30
    assert run["scoring"]["seconds"] > 0 and run["scoring"]["train_seconds"] > 0
    assert len(SuspectBook(store).scores(run["id"])) == 30
    store.close()
