"""The automatic recipe: the benchmark's best configuration for the device, trimmed to the time budget, and one
line saying why; and a real job that runs it and records what it chose."""
from __future__ import annotations

import pytest

from imgcls import recipe
from imgcls.recipe import CANDIDATES, MAX_AUTO_EPOCHS, MIN_AUTO_EPOCHS, choose, estimate


def test_a_generous_budget_gets_the_benchmarks_best_recipe_for_the_device():
    for device in ("cpu", "cuda"):
        arch, size, epochs, tfm = CANDIDATES[device][0]
        r = choose(240, device, budget=1e6, cpus=2)
        assert (r.arch, r.size, r.epochs, r.freeze_epochs) == (arch, size, epochs, 1)
        assert "most accurate" in r.why and "\n" not in r.why
        assert r.item_tfm == tfm
        assert f"{arch} at {size} px{recipe.TFM_WORDS[tfm]}, 1 warm-up + {epochs} epochs:" in r.why
        assert "240 training images" in r.why


def test_the_estimate_stays_within_the_budget_and_shrinks_the_recipe_to_fit():
    n = 240
    best = choose(n, "cpu", budget=1e6, cpus=2)
    tight = choose(n, "cpu", budget=best.estimate_s / 2, cpus=2)
    assert tight.estimate_s <= best.estimate_s / 2
    assert (tight.size, tight.epochs, tight.arch) != (best.size, best.epochs, best.arch)
    assert tight.estimate_s == pytest.approx(estimate(n, tight.arch, tight.size, tight.epochs, 1, "cpu", 2))
    assert "fits" in tight.why and "of the" in tight.why


def test_nothing_fits_then_the_quickest_recipe_and_the_line_says_it_takes_longer():
    r = choose(5000, "cpu", budget=10, cpus=2)
    assert r.epochs == MIN_AUTO_EPOCHS and r.estimate_s > 10
    assert (r.arch, r.size) == CANDIDATES["cpu"][-1][:2]
    assert "over the 10 s budget" in r.why


def test_a_small_dataset_gets_more_epochs_up_to_a_cap():
    base = CANDIDATES["cpu"][0][2]
    assert choose(240, "cpu", 1e6, cpus=2).epochs == base
    small = choose(60, "cpu", 1e6, cpus=2)
    assert base < small.epochs <= MAX_AUTO_EPOCHS and "(more epochs for a small dataset)" in small.why
    assert "small dataset" not in choose(240, "cpu", 1e6, cpus=2).why
    assert choose(12, "cpu", 1e6, cpus=2).epochs == MAX_AUTO_EPOCHS
    assert choose(5000, "cpu", 1e9, cpus=2).epochs == base  # never fewer than the benchmark's for a big set


def test_what_a_host_fixed_is_kept_and_said():
    r = choose(240, "cpu", 1e6, arch="resnet18", epochs=7, cpus=2)
    assert (r.arch, r.epochs) == ("resnet18", 7) and r.size == CANDIDATES["cpu"][0][1]
    assert "with the backbone and epochs you set, the rest as the clip-art benchmark found best" in r.why
    assert choose(240, "cpu", 1e6, size=96, cpus=2).size == 96


def test_a_gpu_affords_more_than_a_cpu_in_the_same_budget():
    cpu, gpu = choose(400, "cpu", 300, cpus=2), choose(400, "cuda", 300)
    assert estimate(400, gpu.arch, gpu.size, gpu.epochs, 1, "cpu", 2) > cpu.estimate_s
    assert "a GPU" in gpu.why and "2 CPU cores" in cpu.why


def test_more_cores_are_faster_and_the_costs_grow_with_size_and_backbone():
    assert recipe.epoch_cost("lite0", 128, "cpu", 16) < recipe.epoch_cost("lite0", 128, "cpu", 2)
    assert recipe.epoch_cost("lite0", 128, "cpu", 2) < recipe.epoch_cost("lite0", 192, "cpu", 2) \
        < recipe.epoch_cost("lite0", 224, "cpu", 2)
    assert recipe.epoch_cost("lite0", 160, "cpu", 2) < recipe.epoch_cost("lite2", 160, "cpu", 2)
    assert recipe.epoch_cost("lite0", 224, "cuda") < recipe.epoch_cost("lite0", 224, "cpu", 16)


def test_a_job_with_the_automatic_recipe_trains_what_it_chose_and_records_it(store, tmp_path):
    from imgcls.collect import add_files, folder_files
    from imgcls.jobs import ProcessJobExecutor
    from imgcls.runs import RunParams, train_workshop
    from imgcls.types import ImageMeta

    from ..conftest import write_image_folders

    labels = ["circles", "squares"]
    photos = write_image_folders(tmp_path / "photos", per_label=8, size=64, labels=labels)
    ws = store.create_workshop("auto", labels)
    add_files(store, ws["id"], folder_files(photos, labels), meta=ImageMeta(source="folder", added_by="tester"))
    events = []
    # the backbone is left to the recipe; size and epochs fixed small so the test stays quick
    params = RunParams(size=64, epochs=1, bs=8, suspects="none", auto=("arch",), budget=300)
    run = train_workshop(store, ws["id"], params, ProcessJobExecutor(), progress=events.append, timeout=300)
    assert run["status"] == "done", run["error"]
    chosen = CANDIDATES["cpu"][0][0]
    lines = [e.message for e in events if e.kind == "recipe"]
    assert len(lines) == 1 and lines[0].startswith(f"{chosen} at 64 px") and "1 warm-up + 1 epoch:" in lines[0]
    assert "with the size and epochs you set" in lines[0]
    p = run["params"]
    assert (p["arch"], p["size"], p["epochs"], p["auto"], p["recipe"]) == (chosen, 64, 1, [], lines[0])
    assert p["item_tfm"] == CANDIDATES["cpu"][0][3]
    assert len(run["epochs"]) == 2  # 1 frozen + 1, as chosen


def test_the_recipe_never_goes_over_the_bots_epoch_cap():
    assert choose(12, "cpu", 1e6, cpus=2, max_epochs=4).epochs == 4
    assert choose(5000, "cpu", 1, cpus=2, max_epochs=1).epochs == 1


def fake_spec(n: int, **kw):
    from imgcls.types import TrainItem, TrainSpec

    items = tuple(TrainItem(i, f"/x/{i}.jpg", "a" if i % 2 else "b", valid=i % 5 == 0) for i in range(n))
    return TrainSpec(items=items, labels=("a", "b"), out_dir="", **kw)


def test_apply_recipe_fills_in_only_what_is_automatic_and_splits_the_budget_for_kfold():
    from imgcls.train import apply_recipe

    spec = fake_spec(100, auto=("arch", "size", "epochs"), budget=1e6)
    chosen, line = apply_recipe(spec, "cpu")
    n_train = 80
    expected = choose(n_train, "cpu", 1e6, bs=32)
    assert (chosen.arch, chosen.size, chosen.epochs, chosen.item_tfm, chosen.auto) == \
        (expected.arch, expected.size, expected.epochs, expected.item_tfm, ())
    assert line == expected.why and f"{n_train} training images" in line
    assert chosen.items == spec.items  # the split is the workshop's, whatever the recipe

    by_hand = fake_spec(100, auto=("size",), arch="resnet18", epochs=2, budget=1e6)
    chosen, line = apply_recipe(by_hand, "cpu")
    assert (chosen.arch, chosen.epochs) == ("resnet18", 2) and "with the backbone and epochs you set" in line

    budget = expected.estimate_s * 1.5  # fits one fine_tune, not four
    one, _ = apply_recipe(fake_spec(100, auto=("arch", "size", "epochs"), budget=budget), "cpu")
    four, line = apply_recipe(fake_spec(100, auto=("arch", "size", "epochs"), budget=budget, folds=4), "cpu", "kfold")
    assert (one.size, one.epochs) == (expected.size, expected.epochs)
    assert (four.size, four.epochs, four.arch) != (one.size, one.epochs, one.arch)
    assert f"the {recipe._minutes(budget / 4)} budget" in line  # each of the four fine-tunes gets a quarter
