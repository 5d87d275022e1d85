"""Does a vote-and-retrain round undo label noise? Real images, the product's own functions.

    .venv/bin/python bench/cleaning.py [--seeds 0,1,2] [--methods embed,kfold,insample] [--noise 0.15]
                                       [--size 128] [--epochs 3] [--candidates 2.0] [--cache DIR]

Data: Debian's openclipart-png (fetched with apt-get download + dpkg -x into --cache at bench
time only), four categories, images of at least 64 px. Everything is ingested once (which
also drops near-duplicates); then per noise seed:

  1. hold out a clean test set (--test-share of each category) that is never ingested into a
     workshop, and flip --noise of the remaining labels to another category;
  2. clean: a workshop with the true labels, trained once: the accuracy to get back to;
  3. for each method: a workshop with the flipped labels, `runs.train_workshop` with
     suspects=METHOD (the job scores every image), `SuspectBook.pick` of --candidates x the
     number of flipped images, three honest simulated voters (relabel to the true label, or
     keep) through `CleaningBoard.vote`, `apply` with quorum 2, and a retrain (parent = the
     noisy run, so its before/after is measured too);
  4. test accuracy of the clean, noisy and cleaned models on the held-out set, with
     `Predictor.predict_many`.

Per method it prints precision and recall of the posted suspects, the accuracies, recovery =
(cleaned - noisy) / (clean - noisy), and the time scoring added as a ratio of the run's own
fine_tune time (both measured inside the same job). The baseline is the clean model.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clipart import DEFAULT_CATEGORIES, hold_out, ingest_categories, short_name  # noqa: E402
from imgcls.cleaning import CleaningBoard  # noqa: E402
from imgcls.collect import add_files  # noqa: E402
from imgcls.compare import compare_runs  # noqa: E402
from imgcls.jobs import ProcessJobExecutor  # noqa: E402
from imgcls.predict import Predictor  # noqa: E402
from imgcls.runs import RunParams, train_workshop  # noqa: E402
from imgcls.store import Store  # noqa: E402
from imgcls.suspects import SuspectBook  # noqa: E402
from imgcls.types import ImageMeta  # noqa: E402

GOAL = {"recall": 0.9, "recovery": 0.9, "time_ratio": 1.0}


def test_accuracy(run: dict, test: list[tuple[bytes, str]]) -> float:
    preds = Predictor().predict_many(run["model_path"], run["model_sha256"], [b for b, _ in test])
    return sum(p.label == label for p, (_, label) in zip(preds, test)) / len(test)


def workshop(store: Store, name: str, labels: list[str], files: list[tuple[str, Path]], pool) -> tuple[int, dict]:
    """A workshop of the given (label, stored file) pairs; {image_id: file} for the ones stored."""
    ws = store.create_workshop(name, labels)
    added = add_files(store, ws["id"], files, meta=ImageMeta(source="folder", added_by="bench"), pool=pool)
    ids = {a.outcome.image_id: path for a, (_, path) in zip(added, files) if a.outcome.ok}
    return ws["id"], ids


def vote_round(store: Store, wid: int, run: dict, truth: dict[int, str], count: int) -> dict:
    """Post `count` suspects, let three honest voters vote, apply with quorum 2."""
    book, board = SuspectBook(store), CleaningBoard(store)
    picked = book.pick(wid, count, run_id=run["id"])
    for s in picked.suspects:
        legend = [x for x in store.labels(wid) if x != s.label]
        cid = board.add_candidate(wid, run["id"], s.image_id, predicted=s.predicted, probability=s.probability,
                                  legend=legend, kind=s.kind, score=s.score, reason=s.reason)
        current, true = store.image(s.image_id)["label"], truth[s.image_id]
        choice = "keep" if current == true else f"label:{true}"
        for voter in ("v1", "v2", "v3"):
            board.vote(cid, voter, choice)
    summary = board.apply(wid, quorum=2, who="bench")
    return {"posted": [s.image_id for s in picked.suspects], "available": picked.available,
            "ranking": [s.image_id for s in book.ranking(run["id"])], "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="embed,kfold,insample")
    p.add_argument("--categories", default=",".join(DEFAULT_CATEGORIES))
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument("--test-share", type=float, default=0.25)
    p.add_argument("--candidates", type=float, default=2.0, help="vote candidates as a multiple of the flipped count")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1, help="vote-and-retrain rounds (the issue's figure is round 1)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "imgcls-clipart"))
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="write the per-seed figures here")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    cats = [c for c in args.categories.split(",") if c]
    labels = [short_name(c) for c in cats]
    print(f"settings: categories={cats} noise={args.noise} test_share={args.test_share} candidates="
          f"{args.candidates}x size={args.size} epochs=1 frozen + {args.epochs} bs={args.bs} folds={args.folds} "
          f"seeds={seeds} methods={methods}", flush=True)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="imgcls-bench-cleaning-"))
    store = Store(work / "data")
    spawn = multiprocessing.get_context("spawn")
    executor = ProcessJobExecutor(1)
    params = dict(arch="lite0", size=args.size, epochs=args.epochs, bs=args.bs, folds=args.folds)
    rows = []
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        # everything once, with the true labels: de-duplicated, normalised 512 px copies
        by_label = ingest_categories(store, cats, Path(args.cache), pool)
        print("usable images: " + ", ".join(f"{k} {len(v)}" for k, v in by_label.items()), flush=True)
        for seed in seeds:
            rng = random.Random(seed)
            test_files, pool_files = hold_out(by_label, rng, args.test_share)
            test = [(f.read_bytes(), label) for label, f in test_files]
            flipped = set(rng.sample(range(len(pool_files)), round(len(pool_files) * args.noise)))
            noisy_files = [(rng.choice([x for x in labels if x != label]) if i in flipped else label, f)
                           for i, (label, f) in enumerate(pool_files)]
            true_of = {f: label for label, f in pool_files}

            t0 = time.monotonic()
            wid, _ = workshop(store, f"clean {seed}", labels, pool_files, pool)
            clean_run = train_workshop(store, wid, RunParams(**params, seed=seed, suspects="none"), executor,
                                       timeout=3600)
            clean_acc = test_accuracy(clean_run, test)
            print(f"seed {seed}: {len(pool_files)} training images ({len(flipped)} flipped), {len(test)} test; "
                  f"clean test accuracy {clean_acc:.3f} ({time.monotonic() - t0:.0f}s)", flush=True)
            for method in methods:
                t0 = time.monotonic()
                wid, ids = workshop(store, f"noisy {seed} {method}", labels, noisy_files, pool)
                truth = {i: true_of[f] for i, f in ids.items()}
                noisy_ids = {i for i in ids if store.image(i)["label"] != truth[i]}
                run = train_workshop(store, wid, RunParams(**params, seed=seed, suspects=method), executor,
                                     timeout=3600)
                if run["status"] != "done":
                    print(f"  {method}: run failed: {run['error']}", flush=True)
                    continue
                noisy_acc = test_accuracy(run, test)
                count = round(args.candidates * len(noisy_ids))
                first_run, found, extra = run, set(), []
                for round_no in range(1, args.rounds + 1):
                    voted = vote_round(store, wid, run, truth, count)
                    posted = set(voted["posted"])
                    found |= posted & noisy_ids
                    if round_no == 1:
                        first_posted = posted
                    last = round_no == args.rounds
                    retrain = train_workshop(store, wid, RunParams(**params, seed=seed,
                                                                   suspects="none" if last else method),
                                             executor, timeout=3600, parent_run_id=run["id"])
                    if round_no == 1:
                        cleaned_acc, diff, relabelled = test_accuracy(retrain, test), compare_runs(run, retrain), \
                            voted["summary"]["relabelled"]
                    else:
                        extra.append((round_no, len(found) / len(noisy_ids), test_accuracy(retrain, test)))
                    run = retrain
                hits = len(first_posted & noisy_ids)
                posted = first_posted
                scoring = first_run["scoring"]
                gap = clean_acc - noisy_acc
                row = {
                    "seed": seed, "method": method, "noisy": len(noisy_ids), "asked": count,
                    "posted": len(posted), "available": None,
                    "precision": hits / len(posted) if posted else 0.0, "recall": hits / len(noisy_ids),
                    "clean": clean_acc, "noisy_acc": noisy_acc, "cleaned": cleaned_acc,
                    "recovery": (cleaned_acc - noisy_acc) / gap if gap > 0 else float("nan"),
                    "time_ratio": scoring["seconds"] / scoring["train_seconds"],
                    "scoring_s": scoring["seconds"], "train_s": scoring["train_seconds"],
                    "relabelled": relabelled,
                    "before_after": f"{diff.before_right}/{diff.n} -> {diff.after_right}/{diff.n}" if diff else "-",
                    "from_train": len(posted & noisy_ids & {i for i, v in first_run["snapshot"]["split"] if not v}),
                    "later_rounds": [{"round": r, "recall": rec, "test_acc": acc,
                                      "recovery": (acc - noisy_acc) / gap if gap > 0 else float("nan")}
                                     for r, rec, acc in extra],
                }
                rows.append(row)
                print(f"  {method:<8} posted {row['posted']}/{count}: precision "
                      f"{row['precision']:.2f} recall {row['recall']:.2f} ({row['from_train']} from the training "
                      f"side); test acc noisy {noisy_acc:.3f} -> cleaned {cleaned_acc:.3f} (clean {clean_acc:.3f}), "
                      f"recovery {row['recovery']:.2f}; scoring {row['scoring_s']:.1f}s = {row['time_ratio']:.2f}x "
                      f"the fine_tune ({row['train_s']:.1f}s); fair before/after on the same validation images "
                      f"{row['before_after']} ({time.monotonic() - t0:.0f}s)", flush=True)
                for later in row["later_rounds"]:
                    print(f"           after round {later['round']}: recall so far {later['recall']:.2f}, test acc "
                          f"{later['test_acc']:.3f}, recovery {later['recovery']:.2f}", flush=True)
    executor.shutdown()
    store.close()

    print("\nsummary (mean ± spread over seeds; baseline: the clean model's test accuracy)")
    print(f"{'method':<9} {'precision':>12} {'recall':>12} {'clean':>12} {'noisy':>12} {'cleaned':>12} "
          f"{'recovery':>12} {'time ratio':>12}")
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue

        def cell(key: str) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.mean(vals):.2f}±{(max(vals) - min(vals)) / 2:.2f}"

        print(f"{method:<9} {cell('precision'):>12} {cell('recall'):>12} {cell('clean'):>12} {cell('noisy_acc'):>12} "
              f"{cell('cleaned'):>12} {cell('recovery'):>12} {cell('time_ratio'):>12}")
    if args.rounds > 1:
        for method in methods:
            rs = [r["later_rounds"][-1] for r in rows if r["method"] == method and r["later_rounds"]]
            if rs:
                print(f"{method:<9} after {args.rounds} rounds: recall {statistics.mean(r['recall'] for r in rs):.2f}, "
                      f"recovery {statistics.mean(r['recovery'] for r in rs):.2f}")
    print(f"goal for the default method: recall >= {GOAL['recall']}, recovery >= {GOAL['recovery']}, "
          f"time ratio <= {GOAL['time_ratio']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
