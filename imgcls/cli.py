"""The `imgcls` command: run a workshop from a terminal.

    imgcls init flowers --labels "sunflowers, lavender, roses"
    imgcls add-folder flowers ~/photos        # ~/photos/sunflowers/*.jpg, ...
    imgcls train flowers --arch lite0 --epochs 3
    imgcls results flowers --out results/
    imgcls suspects flowers --count 10        # the images most likely to be wrong, best first
    imgcls predict flowers mystery.jpg
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sqlite3
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from . import __version__
from .credits import credit_line
from .errors import ImgclsError, InvalidInput
from .jobs import worker_init
from .store import Store, parse_labels
from .types import ARCHS, REJECT_REASONS, SUSPECT_METHODS, ImageMeta, Progress

log = logging.getLogger(__name__)


def bar(done: int, total: int, width: int = 28) -> str:
    """A text progress bar: [##########----------]  12/30"""
    total = max(total, 1)
    filled = round(width * min(done, total) / total)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(total))}}/{total}"


class ProgressLine:
    """Redraws one status line on a terminal; prints only milestones when output is a file or pipe."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.live = False

    def update(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
            self.live = True

    def print(self, text: str) -> None:
        if self.live:
            self.out.write("\r\x1b[2K")
            self.live = False
        print(text, file=self.out, flush=True)


def epoch_table_header() -> str:
    return f"{'epoch':>5}  {'phase':<8} {'train_loss':>10} {'valid_loss':>10} {'accuracy':>8} {'time':>7}"


def epoch_row(e: dict) -> str:
    return (f"{e['epoch']:>5}  {e['phase']:<8} {e['train_loss']:>10.4f} {e['valid_loss']:>10.4f} "
            f"{e['accuracy']:>8.3f} {e['seconds']:>6.1f}s")


# ---------------------------------------------------------------- commands


def cmd_init(store: Store, args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    ws = store.create_workshop(args.name, labels)
    print(f"Workshop '{ws['name']}' created with labels: {', '.join(store.labels(ws['id'])) or '(none)'}")
    return 0


def cmd_add_folder(store: Store, args: argparse.Namespace) -> int:
    from .collect import add_files, folder_files

    ws = store.find_workshop(args.name)
    files = folder_files(args.folder, store.labels(ws["id"]))
    line = ProgressLine(sys.stdout)
    workers = max(1, min(args.jobs or os.cpu_count() or 1, len(files)))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init,
                             initargs=(os.getpid(),)) as pool:
        added = add_files(store, ws["id"], files, meta=ImageMeta(source="folder", added_by=args.who), pool=pool,
                          progress=lambda n, total, item: line.update(f"ingesting {bar(n, total)}"))
    stored = sum(1 for a in added if a.outcome.ok)
    line.print(f"{stored} of {len(added)} images stored.")
    for a in added:
        if not a.outcome.ok and args.verbose:
            print(f"  refused {a.label}/{a.name}: {a.outcome.reason_text}: {a.outcome.detail}")
    return _print_images(store, ws)


def _print_images(store: Store, ws: dict) -> int:
    counts = store.counts(ws["id"])
    width = max((len(label) for label in counts), default=5)
    print(f"Images in '{ws['name']}':")
    for label, n in counts.items():
        print(f"  {label:<{width}}  {n:>5}")
    rejects = store.reject_counts(ws["id"])
    if rejects:
        print("Refused:")
        for reason, n in rejects.items():
            print(f"  {REJECT_REASONS.get(reason, reason):<{width}}  {n:>5}")
    return 0


def cmd_images(store: Store, args: argparse.Namespace) -> int:
    return _print_images(store, store.find_workshop(args.name))


def cmd_train(store: Store, args: argparse.Namespace) -> int:
    from .jobs import ProcessJobExecutor
    from .runs import RunParams, train_workshop

    ws = store.find_workshop(args.name)
    auto = tuple(name for name in ("arch", "size", "epochs") if getattr(args, name) is None)
    given = {name: getattr(args, name) for name in ("arch", "size", "epochs") if getattr(args, name) is not None}
    params = RunParams(**given, bs=args.bs, device=args.device, valid_pct=args.valid_pct, seed=args.seed,
                       suspects=args.suspects, auto=auto, budget=args.budget)
    line = ProgressLine(sys.stdout)
    state = {"header": False}

    def progress(ev: Progress) -> None:
        if ev.kind == "recipe":
            line.print(f"automatic recipe: {ev.message}")
        elif ev.kind == "notice" or ev.message.startswith("waiting for a GPU worker"):
            line.print(ev.message)  # news, not a passing stage: shown even when output is a file
        elif ev.kind == "stage":
            line.update(ev.message + "…")
        elif ev.kind in ("epoch_start", "batch"):
            line.update(f"epoch {ev.epoch + 1}/{ev.total_epochs} {bar(ev.batch, ev.total_batches)}")
        elif ev.kind == "epoch_end" and ev.metrics:
            if not state["header"]:
                line.print(epoch_table_header())
                state["header"] = True
            line.print(epoch_row(vars(ev.metrics)))

    if args.executor == "dask":
        from .dask_jobs import DaskJobExecutor

        if not args.scheduler:
            raise InvalidInput("--executor dask needs --scheduler tcp://HOST:PORT (or DASK_SCHEDULER).")
        executor = DaskJobExecutor.from_settings(args.scheduler, tls_ca_file=os.environ.get("DASK_TLS_CA_FILE", ""),
                                                 tls_cert=os.environ.get("DASK_TLS_CERT", ""),
                                                 tls_key=os.environ.get("DASK_TLS_KEY", ""))
        where = f" on the GPU cluster at {args.scheduler}"
    else:
        executor = ProcessJobExecutor(max_workers=1)
        where = ""
    print(f"Training {args.arch} on '{ws['name']}' ({sum(store.counts(ws['id']).values())} images){where}…")
    try:
        run = train_workshop(store, ws["id"], params, executor, progress=progress, timeout=args.timeout,
                             requested_by=args.who)
    finally:
        executor.shutdown(wait=False)
    if run["status"] != "done":
        line.print(f"Run {run['id']} {run['status']}: {run['error']}")
        return 1
    m = run["metrics"]
    line.print(f"Run {run['id']} done in {m['seconds']:.0f}s on {run['device']}: accuracy {m['accuracy']:.1%} "
               f"on {m['n_valid']} validation images. See `imgcls results {ws['name']} --run {run['id']} --out DIR`.")
    return 0


def cmd_results(store: Store, args: argparse.Namespace) -> int:
    from . import interpret

    ws = store.find_workshop(args.name)
    run = _pick_run(store, ws, args.run)
    print(f"Run {run['id']} ({run['params']['arch']}, {run['metrics']['n_train']} training / "
          f"{run['metrics']['n_valid']} validation images, {run['device']})")
    print(epoch_table_header())
    for e in run["epochs"]:
        print(epoch_row(e))
    print(f"Accuracy: {run['metrics']['accuracy']:.1%}")
    if run["most_confused"]:
        print("Most confused (actual -> predicted: count):")
        for actual, predicted, n in run["most_confused"]:
            print(f"  {actual} -> {predicted}: {n}")
    else:
        print("No confusions on the validation set.")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tiles = [interpret.Tile(t["path"], t["actual"], t["predicted"], t["loss"], t["probability"],
                                credit_line(store.image(t["image_id"]), short=True)) for t in run["top_losses"]]
        confusion_png, losses_png = out / f"run{run['id']}_confusion.png", out / f"run{run['id']}_top_losses.png"
        confusion_png.write_bytes(interpret.render_confusion(run["labels"], run["confusion"]))
        losses_png.write_bytes(interpret.render_top_losses(tiles))
        print(f"Wrote {confusion_png} and {losses_png}")
    return 0


def _pick_run(store: Store, ws: dict, run_id: Optional[int]) -> dict:
    if run_id is None:
        return store.latest_run(ws["id"])
    run = store.run(run_id)
    if run["workshop_id"] != ws["id"]:
        raise InvalidInput(f"Run {run_id} belongs to another workshop.")
    if run["status"] != "done":
        raise InvalidInput(f"Run {run_id} is {run['status']}, so it has no results.")
    return run


def cmd_suspects(store: Store, args: argparse.Namespace) -> int:
    from .suspects import SuspectBook

    ws = store.find_workshop(args.name)
    book = SuspectBook(store)
    if args.run is not None:
        _pick_run(store, ws, args.run)
    picked = book.pick(ws["id"], args.count, run_id=args.run)
    run = store.run(picked.run_id)
    scoring = run["scoring"] or {}
    print(f"Run {run['id']} checked {scoring.get('scored', 0)} images ({scoring.get('method', '?')}, "
          f"{scoring.get('seconds', 0):.0f}s): {picked.available} suspects can go up for a vote.")
    if not picked.suspects:
        return 0
    print(f"{'rank':>4}  {'image':>6}  {'side':<5}  {'kind':<9}  {'score':>5}  why")
    for n, s in enumerate(picked.suspects, 1):
        print(f"{n:>4}  {s.image_id:>6}  {'valid' if s.valid else 'train':<5}  {s.kind:<9}  {s.score:>5.3f}  "
              f"{s.reason.replace('*', '')}")
    if picked.short:
        print(f"(asked for {args.count}; only {picked.available} are left)")
    return 0


def cmd_predict(store: Store, args: argparse.Namespace) -> int:
    from .predict import Predictor

    ws = store.find_workshop(args.name)
    run = _pick_run(store, ws, args.run)
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"Cannot read {args.image}: {exc.strerror}.") from exc
    pred = Predictor().predict(run["model_path"], run["model_sha256"], data, k=args.k, run_id=run["id"],
                               onnx_path=run.get("onnx_path"), onnx_sha256=run.get("onnx_sha256"))
    print(f"{pred.label} ({pred.probability:.1%}) — run {run['id']}")
    for label, p in pred.top:
        print(f"  {label:<24} {p:6.1%}")
    return 0


def cmd_runs(store: Store, args: argparse.Namespace) -> int:
    ws = store.find_workshop(args.name)
    for run in store.runs(ws["id"]):
        acc = f"{run['metrics']['accuracy']:.1%}" if run["metrics"] else "-"
        n = len((run["snapshot"] or {}).get("items", []))
        print(f"run {run['id']:>3}  {run['status']:<11} {run['params'].get('arch', '?'):<9} {n:>5} images  "
              f"accuracy {acc:>6}  {run['created_at']}  {run['error'] or ''}")
    return 0


def _search_config():
    from .search import SearchConfig

    env = os.environ
    defaults = SearchConfig()
    return SearchConfig(
        allow=_download_config().allow,
        openverse_url=env.get("OPENVERSE_URL", defaults.openverse_url),
        wikimedia_url=env.get("WIKIMEDIA_URL", defaults.wikimedia_url),
        openverse_client_id=env.get("OPENVERSE_CLIENT_ID") or None,
        openverse_client_secret=env.get("OPENVERSE_CLIENT_SECRET") or None,
    )


def _download_config():
    from .download import DownloadConfig

    allow = tuple(a.strip() for a in os.environ.get("DOWNLOAD_ALLOW", "").split(",") if a.strip())
    return DownloadConfig(allow=allow)


def cmd_download(store: Store, args: argparse.Namespace) -> int:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from .download import download_images, make_session
    from .search import Searcher, check_sources

    ws = store.find_workshop(args.name)
    sources = check_sources(args.sources)
    if not 1 <= args.per_label <= 1000:
        raise InvalidInput("--per-label must be between 1 and 1000.")
    line = ProgressLine(sys.stdout)
    state: dict[str, Any] = {}

    def progress(p) -> None:
        state[p.label] = p
        line.update("  ".join(f"{q.label} {bar(q.stored, q.target, 12)}" for q in state.values()))

    config = _download_config()

    async def main(db, pool):
        async with make_session(config) as session:
            searcher = Searcher(session, _search_config(), cache=store, db=db)
            return await download_images(session=session, store=store, db=db, pool=pool, source=searcher,
                                         workshop_id=ws["id"], per_label=args.per_label, sources=sources,
                                         config=config, progress=progress, added_by=args.who)

    workers = max(1, min(args.jobs or os.cpu_count() or 1, 8))
    # The executors live outside the event loop, so shutting them down never blocks it.
    with ThreadPoolExecutor(1, thread_name_prefix="db") as db, \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init,
                             initargs=(os.getpid(),)) as pool:
        report = asyncio.run(main(db, pool))
    for error in report.errors:
        line.print(f"warning: {error}")
    line.print(report.summary())
    return _print_images(store, ws)


def cmd_credits(store: Store, args: argparse.Namespace) -> int:
    ws = store.find_workshop(args.name)
    shown = 0
    for row in store.images(ws["id"]):
        line = credit_line(row)
        if line:
            print(f"{row['id']:>5} {row['label']}: {line}")
            shown += 1
    if not shown:
        print("No image here needs a credit (all are the group's own).")
    return 0


def cmd_delete(store: Store, args: argparse.Namespace) -> int:
    ws = store.find_workshop(args.name)
    change = store.delete_image(ws["id"], args.image_id, who=args.who, why=args.why)
    print(f"Image {args.image_id} deleted (change {change}; `imgcls undo {ws['name']}` brings it back).")
    return 0


def cmd_relabel(store: Store, args: argparse.Namespace) -> int:
    ws = store.find_workshop(args.name)
    change = store.relabel(ws["id"], args.image_id, args.label, who=args.who, why=args.why)
    print(f"Image {args.image_id} relabelled to '{store.image(args.image_id)['label']}' (change {change}).")
    return 0


def cmd_undo(store: Store, args: argparse.Namespace) -> int:
    ws = store.find_workshop(args.name)
    undone = store.undo(ws["id"], args.change, who=args.who)
    print(f"Undid {len(undone)} change(s).")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcls", description="Run an image-classifier workshop from the terminal.")
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"),
                   help="where the database, images and models live (default: $DATA_DIR or ./data)")
    p.add_argument("--who", default=os.environ.get("USER", "cli"), help="name recorded in the audit log")
    p.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("name", help="the workshop's name")
        return sp

    add("init", cmd_init, "create a workshop").add_argument("--labels", required=True,
                                                             help='comma-separated, e.g. "sunflowers, lavender, roses"')
    sp = add("add-folder", cmd_add_folder, "ingest a folder with one sub-folder per label")
    sp.add_argument("folder")
    sp.add_argument("--jobs", type=int, default=0, help="ingest processes (default: one per CPU)")
    sp.add_argument("-v", "--verbose", action="store_true", help="list every refused file")
    add("images", cmd_images, "image counts per label, and refusals by reason")
    sp = add("download", cmd_download, "search the web for images of each label and download them")
    sp.add_argument("--per-label", type=int, required=True, help="how many images each label should have")
    sp.add_argument("--sources", default="openverse",
                    help="comma-separated, tried in order: openverse, wikimedia, ddg (default: openverse)")
    sp.add_argument("--jobs", type=int, default=0, help="ingest processes (default: one per CPU)")
    sp = add("train", cmd_train, "train a classifier on the workshop's images")
    sp.add_argument("--arch", default=None, choices=ARCHS, help="default: the automatic recipe chooses")
    sp.add_argument("--epochs", type=int, default=None, help="after the first, frozen one (default: automatic)")
    sp.add_argument("--size", type=int, default=None, help="image size in pixels (default: automatic)")
    sp.add_argument("--budget", type=float, default=300, help="the automatic recipe's training time budget, seconds")
    sp.add_argument("--bs", type=int, default=32, help="batch size")
    sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--valid-pct", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--timeout", type=float, default=3600, help="wall-clock limit in seconds")
    sp.add_argument("--executor", default=os.environ.get("EXECUTOR", "process"), choices=("process", "dask"),
                    help="where to train: a worker process here, or a Dask cluster's GPU workers (default: $EXECUTOR)")
    sp.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER", ""),
                    help="the Dask scheduler, tcp://HOST:PORT, for --executor dask (default: $DASK_SCHEDULER)")
    sp.add_argument("--suspects", default="auto", choices=SUSPECT_METHODS,
                    help="how every image is checked after training (auto = embed: pretrained embeddings, k-fold logistic regression)")
    sp = add("results", cmd_results, "show a run's epochs, accuracy and confusions; write its plots")
    sp.add_argument("--run", type=int, help="run id (default: the latest finished run)")
    sp.add_argument("--out", help="folder for the confusion matrix and top-losses PNGs")
    sp = add("suspects", cmd_suspects, "the images a run found most likely mislabelled, off-topic or duplicated")
    sp.add_argument("--count", type=int, default=20, help="how many to list (default 20)")
    sp.add_argument("--run", type=int, help="run id (default: the latest finished run)")
    sp = add("predict", cmd_predict, "classify an image file")
    sp.add_argument("image")
    sp.add_argument("--run", type=int)
    sp.add_argument("-k", type=int, default=3, help="how many labels to show")
    add("runs", cmd_runs, "list training runs")
    add("credits", cmd_credits, "the attribution of every active image")
    sp = add("delete", cmd_delete, "soft-delete an image (undo brings it back)")
    sp.add_argument("image_id", type=int)
    sp.add_argument("--why", default="")
    sp = add("relabel", cmd_relabel, "move an image to another label")
    sp.add_argument("image_id", type=int)
    sp.add_argument("label")
    sp.add_argument("--why", default="")
    sp = add("undo", cmd_undo, "reverse the last change, or a named one")
    sp.add_argument("change", type=int, nargs="?", help="change id from the audit log (default: the last)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        store = Store(args.data_dir)
    except Exception as exc:  # unreadable folder, corrupt database
        print(f"error: cannot open the data directory {args.data_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        return args.fn(store, args)
    except ImgclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:  # unwritable --out folder, unreadable files, a locked database
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
