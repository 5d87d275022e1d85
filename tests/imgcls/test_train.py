"""Training: a real lite0 fine_tune in its own process, its recorded results, and the errors before it starts."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from imgcls.errors import NotReady
from imgcls.jobs import ProcessJobExecutor
from imgcls.runs import RunParams, prepare_run, train_workshop
from imgcls.train import check_spec, train
from imgcls.types import TrainItem, TrainSpec

from .conftest import LABELS, PARAMS


def test_lite0_fine_tune_learns_a_separable_set_within_a_minute(trained):
    assert trained.run["metrics"]["accuracy"] >= 0.85
    assert trained.seconds < 60, f"training took {trained.seconds:.1f}s"
    print(f"\nlite0 at {PARAMS.size}px: {trained.seconds:.1f}s wall; per epoch: "
          + ", ".join(f"{e['seconds']:.2f}s" for e in trained.run["epochs"]))


def test_run_records_epochs_confusion_top_losses_and_split(trained):
    run = trained.run
    assert [e["phase"] for e in run["epochs"]] == ["frozen"] + ["unfrozen"] * PARAMS.epochs
    assert all(e["train_loss"] > 0 and e["valid_loss"] > 0 and e["seconds"] > 0 for e in run["epochs"])
    assert run["labels"] == LABELS  # the workshop's order, not sorted
    n_valid, total = run["metrics"]["n_valid"], len(trained.store.images(trained.workshop_id))
    assert total >= 85 and run["metrics"]["n_train"] == total - n_valid
    per_label = {label: sum(1 for t in trained.store.images(trained.workshop_id) if t["label"] == label) for label in LABELS}
    labels_of = {r["id"]: r["label"] for r in trained.store.images(trained.workshop_id)}
    valid_of = [labels_of[i] for i, valid in run["snapshot"]["split"] if valid]
    assert len(valid_of) == n_valid
    for label, n in per_label.items():  # every label gets its share, to within one image
        assert abs(valid_of.count(label) - 0.2 * n) <= 1, (label, valid_of.count(label), n)
    assert sum(map(sum, run["confusion"])) == n_valid
    right = sum(run["confusion"][i][i] for i in range(3))
    assert right / n_valid == pytest.approx(run["metrics"]["accuracy"])
    for actual, predicted, n in run["most_confused"]:
        assert run["confusion"][LABELS.index(actual)][LABELS.index(predicted)] == n
    losses = [t["loss"] for t in run["top_losses"]]
    assert len(losses) == 9 and losses == sorted(losses, reverse=True)
    # the snapshot names every image trained on, its label and which side of the split it was on
    active = {r["id"]: r["label"] for r in trained.store.images(trained.workshop_id)}
    assert dict(map(tuple, run["snapshot"]["items"])) == active
    split = dict(map(tuple, run["snapshot"]["split"]))
    assert set(split) == set(active) and sum(split.values()) == n_valid
    assert {t["image_id"] for t in run["top_losses"]} <= {i for i, valid in split.items() if valid}


def test_model_and_plots_are_written_with_a_checksum(trained):
    run = trained.run
    model = Path(run["model_path"])
    assert hashlib.sha256(model.read_bytes()).hexdigest() == run["model_sha256"]
    for name in ("confusion", "top_losses"):
        assert Path(run["artefacts"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run["started_at"] <= run["finished_at"]


def test_progress_streams_back_while_training(trained):
    kinds = [e.kind for e in trained.events]
    assert kinds[0] == "stage"
    ends = [e for e in trained.events if e.kind == "epoch_end"]
    assert [e.epoch for e in ends] == [0, 1, 2, 3]
    assert all(e.total_epochs == 4 for e in ends)
    assert kinds.index("epoch_start") < kinds.index("epoch_end")
    assert ends[-1].metrics.accuracy == pytest.approx(trained.run["epochs"][-1]["accuracy"])


def _spec(counts: dict[str, int], **kw) -> TrainSpec:
    items = tuple(TrainItem(i * 100 + k, f"/nowhere/{label}{k}.jpg", label)
                  for i, (label, n) in enumerate(counts.items()) for k in range(n))
    return TrainSpec(items=items, labels=tuple(counts), out_dir="/tmp/unused", **kw)


def test_training_needs_two_labels_with_images():
    with pytest.raises(NotReady, match="at least 2 labels"):
        check_spec(_spec({"cats": 10, "dogs": 0}))


def test_training_needs_five_images_per_label():
    with pytest.raises(NotReady, match=r"at least 5 images; too few: dogs \(4\)"):
        check_spec(_spec({"cats": 10, "dogs": 4}))


def test_a_label_without_validation_images_is_refused_before_training(tmp_path):
    from tests.conftest import write_image_folders

    photos = write_image_folders(tmp_path, per_label=5, size=64)
    items = tuple(TrainItem(k * 10 + i, str(photos / label / f"{i:03d}.jpg"), label)
                  for k, label in enumerate(LABELS) for i in range(5))
    # 10% of 5 images per label is none
    spec = TrainSpec(items=items, labels=tuple(LABELS), out_dir=str(tmp_path / "out"), valid_pct=0.1, size=64)
    with pytest.raises(NotReady, match="No validation image for"):
        train(spec)


def test_asking_for_a_gpu_on_a_cpu_host_says_so(store, tmp_path):
    spec = _spec({"cats": 5, "dogs": 5}, device="cuda")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with pytest.raises(NotReady, match="CUDA is not available"):
        train(spec)


def test_failed_run_is_marked_failed_with_a_reason(store, monkeypatch, tmp_path):
    from tests.conftest import write_image_folders
    from imgcls.collect import add_files, folder_files

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached resnet weights, no network
    photos = write_image_folders(tmp_path / "p", per_label=6, size=64, labels=("circles", "squares"))
    ws = store.create_workshop("w", ["circles", "squares"])
    add_files(store, ws["id"], folder_files(photos, ["circles", "squares"]))
    run = train_workshop(store, ws["id"], RunParams(arch="resnet18", epochs=1, size=64), ProcessJobExecutor(),
                         timeout=120)
    assert run["status"] == "failed"
    assert "lite0" in run["error"] and "resnet18" in run["error"]
    assert run["finished_at"] and run["model_sha256"] is None


def test_too_few_images_fail_before_a_run_is_created(store):
    ws = store.create_workshop("w", ["a", "b"])
    with pytest.raises(NotReady):
        prepare_run(store, ws["id"], RunParams())
    assert store.runs(ws["id"]) == []


def test_a_spec_made_by_hand_gets_the_split_a_fresh_workshop_would():
    from imgcls.train import with_split

    items = tuple(TrainItem(i, f"{i}.jpg", "cats" if i < 12 else "dogs") for i in range(18))
    spec = TrainSpec(items=items, labels=("cats", "dogs"), out_dir="", valid_pct=0.2, seed=1)
    sides = {i.image_id: i.valid for i in with_split(spec)}
    assert [items[i].label for i, v in sides.items() if v].count("cats") in (2, 3)
    assert [items[i].label for i, v in sides.items() if v].count("dogs") == 1
    assert {i.image_id: i.valid for i in with_split(spec)} == sides  # seeded
    given = tuple(TrainItem(i.image_id, i.path, i.label, valid=i.image_id < 4) for i in items)
    assert [i.valid for i in with_split(TrainSpec(items=given, labels=("cats", "dogs"), out_dir=""))] == \
        [i.image_id < 4 for i in items]  # sides given by the store are kept
