"""The split stays put: an image's side never moves when other images are relabelled, deleted or added."""
from __future__ import annotations

from collections import Counter

import pytest

from imgcls.runs import RunParams, build_spec, prepare_run
from imgcls.split import SplitBook, place, split_items, split_key
from imgcls.store import Store
from tests.imgcls.test_store import added_ids, new_workshop


def valid_counts(sides: dict[int, bool], labels: dict[int, str]) -> Counter:
    return Counter(labels[i] for i, v in sides.items() if v)


@pytest.mark.parametrize("n", [5, 6, 8, 12, 13, 30, 47])
def test_every_label_gets_its_share_to_within_one(n):
    items = [(i, "cats" if i % 2 else "dogs", f"sha-{i}") for i in range(2 * n)]
    sides = split_items(items, seed=42, valid_pct=0.2)
    for label in ("cats", "dogs"):
        got = sum(sides[i] for i, lab, _ in items if lab == label)
        assert abs(got - 0.2 * n) <= 1, (label, got, n)


def test_the_side_depends_on_the_image_and_the_seed():
    assert split_key(42, "abc") == split_key(42, "abc")
    assert split_key(42, "abc") != split_key(43, "abc")
    a = split_items([(1, "x", "h1"), (2, "x", "h2"), (3, "x", "h3"), (4, "x", "h4"), (5, "x", "h5")], 42, 0.2)
    b = split_items([(5, "x", "h5"), (3, "x", "h3"), (1, "x", "h1"), (4, "x", "h4"), (2, "x", "h2")], 42, 0.2)
    assert a == b  # the order images are listed in does not matter
    assert place([(9, "x", 0.5)], {"x": (0, 9)}, 0.2) == {9: True}  # 1 of 10 would be short of 2


def test_relabel_delete_and_add_never_move_another_image(store: Store):
    wid = new_workshop(store)
    ids = {label: added_ids(store, wid, label, range(10)) for label in ("circles", "squares", "triangles")}
    book = SplitBook(store)
    first = book.assign(wid, store.images(wid), seed=42, valid_pct=0.2)
    labels = {r["id"]: r["label"] for r in store.images(wid)}
    assert all(n == 2 for n in valid_counts(first, labels).values())

    moved = [i for i in ids["circles"] if first[i]][0]
    store.relabel(wid, moved, "squares")  # a validation image changes label
    kept_train = [i for i in ids["squares"] if not first[i]][0]
    store.relabel(wid, kept_train, "triangles")  # so does a training image
    store.delete_images(wid, [ids["triangles"][0], ids["triangles"][1], ids["squares"][5]])
    new = added_ids(store, wid, "circles", range(100, 106)) + added_ids(store, wid, "triangles", range(100, 103))

    again = book.assign(wid, store.images(wid), seed=42, valid_pct=0.2)
    for image_id, side in first.items():
        if image_id in again:
            assert again[image_id] == side, image_id  # relabelled or not, nothing already placed moved
    assert again[moved] is True and again[kept_train] is False
    assert set(new) <= set(again)
    # the new images went where their labels were short, so every label is back within one of its share
    labels = {r["id"]: r["label"] for r in store.images(wid)}
    counts = Counter(labels.values())
    valid = valid_counts(again, labels)
    for label in counts:
        assert abs(valid[label] - 0.2 * counts[label]) <= 1, (label, valid[label], counts[label])
    # and a new store (a restart) reads the same sides
    assert SplitBook(Store(store.data_dir)).assign(wid, store.images(wid), seed=42, valid_pct=0.2) == again


def test_a_label_left_without_validation_images_gets_one_back(store: Store):
    wid = new_workshop(store)
    ids = added_ids(store, wid, "circles", range(6)) + added_ids(store, wid, "squares", range(6))
    book = SplitBook(store)
    sides = book.assign(wid, store.images(wid), seed=1, valid_pct=0.2)
    circles_valid = [i for i in ids[:6] if sides[i]]
    store.delete_images(wid, circles_valid)
    again = book.assign(wid, store.images(wid), seed=1, valid_pct=0.2)
    assert any(again[i] for i in ids[:6] if i not in circles_valid)


def test_runs_train_on_the_same_sides(store: Store):
    wid = new_workshop(store, labels=["circles", "squares"])
    for label in ("circles", "squares"):
        added_ids(store, wid, label, range(8))
    _, spec1 = prepare_run(store, wid, RunParams(seed=7))
    victim = next(i for i in spec1.items if i.label == "circles" and not i.valid)
    store.relabel(wid, victim.image_id, "squares")
    spec2 = build_spec(store, wid, RunParams(seed=7))
    sides1 = {i.image_id: i.valid for i in spec1.items}
    sides2 = {i.image_id: i.valid for i in spec2.items}
    assert sides1 == sides2
    assert all(i.valid is not None for i in spec2.items)
    other = build_spec(store, wid, RunParams(seed=8))  # another seed is another split
    assert {i.image_id: i.valid for i in other.items} != sides2
