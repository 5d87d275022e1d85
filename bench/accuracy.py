"""Which recipe trains the best model in the time a workshop has? Real images, a held-out test set.

    .venv/bin/python bench/accuracy.py [--seeds 0,1,2] [--configs notebook,auto,lite0-128-e3,...]
                                       [--categories animals/mammals,...] [--cache DIR] [--jsonl FILE]

Data: Debian's openclipart-png (apt-get download + dpkg -x into --cache at bench time only),
five categories (at least 60 usable images each, at most --per-category), every image of at least 64 px ingested once by the product (near-duplicates
dropped, 512 px copies). Per seed, --test-share of each category is a held-out test set that no
configuration trains or validates on; the rest is split into training and validation images by
the product's own lasting split (imgcls.split), so within a seed every configuration sees the
same images and the comparison is paired.

Every configuration trains with the product's job code (`build_dataloaders`, `make_learner`,
`fine_tune` of imgcls.train: the seeds' DataBlock, aug_transforms, vision_learner) in this
process, on the CPU unless --device says otherwise. The baseline is **notebook**: the seeds'
notebook recipe, `Resize(224)`, `aug_transforms()`, `fine_tune(4)` (1 frozen + 4 epochs at fastai's
default learning rate), with lite0 because the notebooks' resnets need a download. **auto** is the
product's automatic recipe (imgcls.recipe) for this dataset's size on this device, with the bot's
default time budget.

Configuration names: `ARCH-SIZE-eEPOCHS[-find|-squish|-rrc|-lrRATE]`, e.g. `lite1-160-e5` (1 frozen
+ 5 epochs), `lite0-160-e4-find` (the learning rate from fastai's `lr_find` suggestion, its cost
counted as training time), `lite0-192-e4-squish` (whole pictures squished to the size instead of
the centre crop), `-rrc` (random resized crops) or `-lr0.005` (a fixed learning rate).

For each configuration it prints test accuracy (mean and half-range over the seeds), the same
with test-time augmentation (`learn.tta`), validation accuracy, and training CPU time
(`time.process_time` around lr_find + fine_tune, all threads) as a ratio to the notebook recipe in
the same seed. Every finished run is appended to --jsonl, so an interrupted bench resumes where it
stopped (--fresh starts over).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clipart import hold_out, ingest_categories, short_name  # noqa: E402
from bot.settings import Settings  # noqa: E402
from imgcls.recipe import host_cpus  # noqa: E402
from imgcls.split import split_items  # noqa: E402
from imgcls.store import Store  # noqa: E402
from imgcls.types import TrainItem, TrainSpec  # noqa: E402

CATEGORIES = ("animals/mammals", "food/fruit", "recreation/music", "recreation/sports", "tools")
DEFAULT_CONFIGS = (
    "notebook", "auto",
    "lite0-128-e3", "lite0-160-e4", "lite0-160-e6", "lite0-192-e4", "lite0-224-e3",
    "lite1-128-e4", "lite1-160-e4", "lite1-192-e3", "lite2-128-e4", "lite2-160-e4", "lite2-192-e3",
    "lite0-160-e4-find", "lite0-192-e4-lr0.005",
    "lite0-192-e4-squish", "lite0-160-e6-squish", "lite1-128-e6-squish",
    "lite1-224-e4", "lite2-224-e4",
)
GOAL_POINTS = 3.0  # the automatic CPU recipe beats the notebook recipe by this many points, in at most its time


@dataclass(frozen=True)
class Config:
    name: str
    arch: str
    size: int
    epochs: int
    freeze_epochs: int = 1
    find_lr: bool = False
    item_tfm: str = "resize"
    lr: Optional[float] = None  # a fixed learning rate other than fastai's default
    why: str = ""


def parse_config(name: str, n_train: int, device: str, budget: float, bs: int) -> Config:
    if name == "notebook":
        return Config(name, "lite0", 224, 4)
    if name == "auto":
        from imgcls.recipe import choose

        recipe = choose(n_train, device, budget, bs=bs)
        return Config(name, recipe.arch, recipe.size, recipe.epochs, recipe.freeze_epochs, item_tfm=recipe.item_tfm,
                      why=recipe.why)
    parts = name.split("-")
    extras = parts[3:]
    ok = len(parts) >= 3 and parts[2].startswith("e") and all(
        x in ("find", "squish", "rrc") or x.startswith("lr") for x in extras)
    if not ok:
        raise SystemExit(f"bad configuration name {name!r}: use ARCH-SIZE-eEPOCHS[-find|-squish|-rrc|-lrRATE], "
                         "e.g. lite1-160-e5 or lite0-192-e4-squish")
    lr = next((float(x[2:]) for x in extras if x.startswith("lr")), None)
    item_tfm = "squish" if "squish" in extras else "random_resized_crop" if "rrc" in extras else "resize"
    return Config(name, parts[0], int(parts[1]), int(parts[2][1:]), find_lr="find" in extras, item_tfm=item_tfm,
                  lr=lr)


def train_and_test(cfg: Config, items: list[TrainItem], test: list[TrainItem], labels: list[str], seed: int,
                   device: str, bs: int) -> dict:
    """One configuration, trained with the product's job code; test accuracy with and without TTA."""
    import torch
    from fastai.torch_core import set_seed

    from imgcls.train import build_dataloaders, fine_tune, make_learner, warm_up

    warm_up()
    torch.set_num_threads(host_cpus())  # as the training job does
    spec = TrainSpec(items=tuple(items), labels=tuple(labels), out_dir=tempfile.mkdtemp(prefix="imgcls-acc-"),
                     arch=cfg.arch, size=cfg.size, epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, bs=bs,
                     seed=seed, device=device, suspects="none", item_tfm=cfg.item_tfm)
    set_seed(seed)
    dls = build_dataloaders(spec, device, items)
    learn = make_learner(spec, dls, device)
    cpu0, wall0 = time.process_time(), time.monotonic()
    lr = None
    if cfg.find_lr or cfg.lr:
        if cfg.find_lr:
            with learn.no_bar(), learn.no_logging():
                lr = float(learn.lr_find(show_plot=False).valley)
        else:
            lr = cfg.lr
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(cfg.epochs, base_lr=lr, freeze_epochs=cfg.freeze_epochs)
    else:
        fine_tune(learn, spec)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    valid_acc = float(learn.recorder.values[-1][2])
    test_dl = dls.test_dl(test, with_labels=True, bs=64)
    with learn.no_bar(), learn.no_logging():
        probs, targs = learn.get_preds(dl=test_dl)
        tta_probs, tta_targs = learn.tta(dl=test_dl)
    right = int((probs.argmax(1) == targs).sum())
    tta_right = int((tta_probs.argmax(1) == tta_targs).sum())
    n_valid = sum(1 for i in items if i.valid)
    del learn, dls
    return {"config": cfg.name, "arch": cfg.arch, "size": cfg.size, "epochs": cfg.epochs,
            "freeze_epochs": cfg.freeze_epochs, "find_lr": cfg.find_lr, "lr": lr, "item_tfm": cfg.item_tfm, "seed": seed, "device": device,
            "train_images": len(items) - n_valid, "valid_images": n_valid, "test_images": len(test),
            "test_right": right, "test_acc": right / len(test), "tta_right": tta_right,
            "tta_acc": tta_right / len(test), "valid_acc": valid_acc, "cpu_s": cpu, "wall_s": wall, "why": cfg.why}


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (max(values) - min(values)) / 2


def report(rows: list[dict], configs: list[str], seeds: list[int]) -> dict:
    """The table: per configuration, test accuracy (mean ± half-range), TTA, validation, time ratio."""
    by = {(r["config"], r["seed"]): r for r in rows}
    base = {s: by[("notebook", s)] for s in seeds if ("notebook", s) in by}
    print("\nconfiguration        test acc       with TTA       valid acc   train CPU s  wall s  ratio to notebook")
    summary = {}
    for name in configs:
        done = [by[(name, s)] for s in seeds if (name, s) in by]
        if not done:
            continue
        acc, acc_s = spread([r["test_acc"] for r in done])
        tta, tta_s = spread([r["tta_acc"] for r in done])
        val, _ = spread([r["valid_acc"] for r in done])
        cpu, _ = spread([r["cpu_s"] for r in done])
        wall, _ = spread([r["wall_s"] for r in done])
        clock = "wall_s" if done[0]["device"] == "cuda" else "cpu_s"  # a GPU's time is not the process's CPU time
        ratios = [r[clock] / base[r["seed"]][clock] for r in done if r["seed"] in base]
        ratio = statistics.mean(ratios) if ratios else float("nan")
        gains = [(r["test_acc"] - base[r["seed"]]["test_acc"]) * 100 for r in done if r["seed"] in base]
        summary[name] = {"test_acc": acc, "test_spread": acc_s, "tta_acc": tta, "tta_spread": tta_s,
                         "valid_acc": val, "cpu_s": cpu, "wall_s": wall, "ratio": ratio,
                         "gain_points": statistics.mean(gains) if gains else float("nan"), "seeds": len(done),
                         "arch": done[0]["arch"], "size": done[0]["size"], "epochs": done[0]["epochs"]}
        print(f"{name:<20} {acc:.3f} ±{acc_s:.3f}   {tta:.3f} ±{tta_s:.3f}   {val:.3f}       {cpu:8.1f} {wall:7.1f}  "
              f"{ratio:.2f}x" + (f"   ({len(done)} of {len(seeds)} seeds)" if len(done) < len(seeds) else ""))
    n_test = rows[0]["test_images"] if rows else 0
    print(f"\n(one test image is {100 / max(1, n_test):.1f} points; ± is half the range over seeds {seeds})")
    if "auto" in summary and "notebook" in summary:
        a = summary["auto"]
        met = a["gain_points"] >= GOAL_POINTS and a["ratio"] <= 1.0
        print(f"auto vs notebook: {a['gain_points']:+.1f} points in {a['ratio']:.2f}x the training time; goal "
              f"(+{GOAL_POINTS:.0f} points in at most 1x): {'met' if met else 'NOT met'}")
        why = next((r["why"] for r in rows if r["config"] == "auto"), "")
        if why:
            print(f"auto chose: {why}")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--per-category", type=int, default=90, help="at most this many images of each category")
    p.add_argument("--test-share", type=float, default=0.25)
    p.add_argument("--valid-pct", type=float, default=0.2)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--budget", type=float, default=Settings.train_budget,
                   help="the automatic recipe's time budget (default: the bot's TRAIN_BUDGET default)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "imgcls-clipart"))
    p.add_argument("--workdir", default=None, help="the ingested images (kept, so a rerun skips ingest)")
    p.add_argument("--jsonl", default=str(Path(tempfile.gettempdir()) / "imgcls-bench-accuracy.jsonl"))
    p.add_argument("--fresh", action="store_true", help="ignore runs already in --jsonl")
    p.add_argument("--summary", default=None, help="write the table's figures here as JSON")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cats = [c for c in args.categories.split(",") if c]
    labels = [short_name(c) for c in cats]
    names = [c for c in args.configs.split(",") if c]
    if "notebook" not in names:
        names.insert(0, "notebook")  # the baseline is always measured in the same run
    print(f"settings: categories={cats} per_category<={args.per_category} test_share={args.test_share} "
          f"valid_pct={args.valid_pct} bs={args.bs} device={args.device} seeds={seeds} torch threads="
          f"{host_cpus()}", flush=True)

    work = Path(args.workdir or Path(tempfile.gettempdir()) / "imgcls-bench-accuracy")
    listing = work / f"images-{hashlib.sha256(','.join(cats).encode()).hexdigest()[:12]}.json"
    if listing.exists():
        by_label = {k: [Path(f) for f in v] for k, v in json.loads(listing.read_text()).items()}
    else:
        store = Store(work / "data")
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            by_label = ingest_categories(store, cats, Path(args.cache), pool)
        store.close()
        listing.write_text(json.dumps({k: [str(f) for f in v] for k, v in by_label.items()}))
    by_label = {k: v[:args.per_category] for k, v in by_label.items()}  # sorted by content hash: a fair draw
    print("usable images: " + ", ".join(f"{k} {len(v)}" for k, v in by_label.items()), flush=True)
    short = [k for k, v in by_label.items() if len(v) < 60]
    if short:
        print(f"note: fewer than 60 usable images in {', '.join(short)}", flush=True)

    jsonl = Path(args.jsonl)
    rows = [] if args.fresh or not jsonl.exists() else [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = [r for r in rows if r.get("device") == args.device]
    for seed in seeds:
        test_pairs, rest = hold_out(by_label, random.Random(seed), args.test_share)
        sides = split_items(((i, label, str(f)) for i, (label, f) in enumerate(rest)), seed, args.valid_pct)
        items = [TrainItem(i, str(f), label, valid=sides[i]) for i, (label, f) in enumerate(rest)]
        test = [TrainItem(-1 - i, str(f), label, valid=False) for i, (label, f) in enumerate(test_pairs)]
        n_train = sum(1 for i in items if not i.valid)
        for name in names:
            cfg = parse_config(name, n_train, args.device, args.budget, args.bs)
            done = next((r for r in rows if r["config"] == name and r["seed"] == seed
                         and (r["arch"], r["size"], r["epochs"], r.get("item_tfm", "resize"))
                         == (cfg.arch, cfg.size, cfg.epochs, cfg.item_tfm)), None)
            if done:
                continue
            t0 = time.monotonic()
            row = train_and_test(cfg, items, test, labels, seed, args.device, args.bs)
            rows = [r for r in rows if not (r["config"] == name and r["seed"] == seed)] + [row]
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"seed {seed} {name:<20} ({cfg.arch} {cfg.size}px 1+{cfg.epochs} {cfg.item_tfm}{' lr_find' if cfg.find_lr else ''}):"
                  f" test {row['test_right']}/{row['test_images']} = {row['test_acc']:.3f}, TTA {row['tta_acc']:.3f},"
                  f" valid {row['valid_acc']:.3f} ({row['valid_images']} images), train {n_train} images,"
                  f" CPU {row['cpu_s']:.0f}s, wall {row['wall_s']:.0f}s ({time.monotonic() - t0:.0f}s in all)",
                  flush=True)
    summary = report(rows, names, seeds)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
