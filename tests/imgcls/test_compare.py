"""A fair before/after: both models on the new run's validation images, with their labels after cleaning."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from imgcls.compare import compare_runs, confusion_of
from imgcls.jobs import ProcessJobExecutor
from imgcls.runs import RunParams, train_workshop
from imgcls.store import Store


def test_both_models_are_compared_on_the_same_images_with_the_current_labels():
    before = {"id": 1}
    after = {"id": 2, "labels": ["cats", "dogs"],
             "snapshot": {"items": [[1, "cats"], [2, "cats"], [3, "dogs"], [4, "dogs"], [5, "dogs"]]},
             "valid_predictions": [[1, "cats", 0.9], [2, "dogs", 0.6], [3, "dogs", 0.8], [4, "dogs", 0.7]],
             "parent_predictions": [[1, "dogs", 0.7], [2, "cats", 0.6], [3, "dogs", 0.9], [4, "cats", 0.5]]}
    diff = compare_runs(before, after)
    assert diff.n == 4  # image 5 is on the training side: neither model is scored on it
    assert (diff.before_right, diff.after_right) == (2, 3)
    assert diff.fixed == ((1, "cats", "dogs"), (4, "dogs", "cats"))
    assert diff.broken == ((2, "cats", "dogs"),)
    assert diff.before_confusion == ((1, 1), (1, 1)) and diff.after_confusion == ((1, 1), (0, 2))
    assert compare_runs(before, {**after, "parent_predictions": None}) is None
    # an image the old model trained on is left out, whatever side it is on now
    older = compare_runs({"id": 1, "snapshot": {"split": [[1, True], [2, False], [3, True], [4, True]]}}, after)
    assert older.n == 3 and (older.before_right, older.after_right) == (1, 3)


def test_a_label_removed_since_gets_its_own_column():
    labels, matrix = confusion_of(["cats", "dogs"], [("cats", "cats"), ("dogs", "birds")])
    assert labels == ["cats", "dogs", "birds"]
    assert matrix == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def copy_of(store: Store, where: Path) -> Store:
    """The shared trained workshop's data, copied, so this test's changes stay its own."""
    shutil.copytree(store.images_dir, where / "images")
    shutil.copytree(store.runs_dir, where / "runs")
    with sqlite3.connect(where / "workshops.db") as target:
        store.db.conn.backup(target)
    return Store(where)


def test_a_retrain_scores_the_old_model_on_its_own_validation_images(trained, tmp_path):
    store, wid, run1 = copy_of(trained.store, tmp_path / "data"), trained.workshop_id, trained.run
    victim = next(i for i, valid in run1["snapshot"]["split"] if valid)
    store.relabel(wid, victim, "squares" if store.image(victim)["label"] != "squares" else "circles")
    params = RunParams(**{**run1["params"], "epochs": 1, "suspects": "none"})
    run2 = train_workshop(store, wid, params, ProcessJobExecutor(), timeout=300, parent_run_id=run1["id"])
    assert run2["status"] == "done", run2["error"]
    valid_ids = [i for i, valid in run2["snapshot"]["split"] if valid]
    assert [p[0] for p in run2["parent_predictions"]] == [p[0] for p in run2["valid_predictions"]]
    assert sorted(p[0] for p in run2["parent_predictions"]) == sorted(valid_ids)
    # the split stayed put, so the old run's validation images are the new run's
    assert sorted(valid_ids) == sorted(i for i, valid in run1["snapshot"]["split"] if valid)
    diff = compare_runs(run1, run2)
    assert diff.n == len(valid_ids) and diff.after_right / diff.n == run2["metrics"]["accuracy"]
    # run 1's model saw `victim` under its old label; the comparison uses the label it has now
    labels_now = dict(map(tuple, run2["snapshot"]["items"]))
    old = {i: p for i, p, _ in run2["parent_predictions"]}
    assert diff.before_right == sum(old[i] == labels_now[i] for i in valid_ids)
    assert Path(run2["artefacts"]["before_confusion"]).read_bytes()[:4] == b"\x89PNG"
