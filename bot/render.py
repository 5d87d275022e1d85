"""Text the bot posts: plain functions of plain data, so they are easy to test and reuse."""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from imgcls.cleaning import DELETE, KEEP, RELABEL, tally
from imgcls.types import REJECT_REASONS

log = logging.getLogger(__name__)

KEEP_EMOJI, DELETE_EMOJI = "✅", "🗑️"
LABEL_EMOJI = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣", "6️⃣", "7️⃣", "8️⃣", "9️⃣", "🔟",
               "🇦", "🇧", "🇨", "🇩", "🇪", "🇫", "🇬", "🇭", "🇮", "🇯")  # 20 labels at most
MESSAGE_LIMIT = 2000
MAX_RELABEL_CHOICES = 18  # Discord allows 20 different reactions on a message: keep, delete and 18 labels


# ---------------------------------------------------------------- user-supplied text

ZWSP = "\u200b"
_MARKDOWN = re.compile(r"([\\*_~`|>\[\]()#-])")
_URL = re.compile(r"https?://[^\s<>()\[\]`]+")
_URL_UNSAFE = {"@": "%40", "*": "%2A", "~": "%7E", "|": "%7C", "_": "%5F"}


def plain(text: Any) -> str:
    """User-supplied text (labels, titles, creators, names) as inert text in a message: markdown escaped, so
    no bold, masked link or heading; mentions broken with a zero-width space, so @everyone, <@1> and <@&1>
    can never ping (the bot's allowed_mentions also forbid it). Bare web addresses stay clickable: only the
    characters in them that mean something to Discord are percent-encoded."""
    text, out, last = str(text), [], 0
    for m in _URL.finditer(text):
        out.append(_inert(text[last:m.start()]))
        out.append("".join(_URL_UNSAFE.get(c, c) for c in m.group()))
        last = m.end()
    out.append(_inert(text[last:]))
    return "".join(out)


def _inert(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text).replace("@", "@" + ZWSP).replace("<", "<" + ZWSP)


def flat(text: Any) -> str:
    """User text where Discord draws no markdown (embed footers): mentions and channel links broken with a
    zero-width space, nothing escaped (a backslash would show)."""
    return str(text).replace("@", "@" + ZWSP).replace("<", "<" + ZWSP)


def code(text: Any) -> str:
    """User-supplied text inside a code block or `inline code`: it cannot close the block, or ping."""
    return str(text).replace("`", "ˋ").replace("@", "@" + ZWSP)


def emphasis(text: Any) -> str:
    """A label in italics, for the reasons a vote gives (imgcls.suspects.explain's `quote`)."""
    return f"*{plain(text)}*"


def bar(done: int, total: int, width: int = 16) -> str:
    total = max(total, 1)
    filled = round(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled)


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def seconds(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def recipe_brief(params: Any) -> str:
    """A run's parameters in a few words; those the automatic recipe will choose say so."""
    auto = set(params.auto)
    if {"arch", "size", "epochs"} <= auto:
        return "automatic recipe"
    parts = [params.arch if "arch" not in auto else "",
             f"{params.epochs} epoch{'s' if params.epochs != 1 else ''}" if "epochs" not in auto else "",
             f"{params.size} px" if "size" not in auto else ""]
    return ", ".join(p for p in parts if p) + (", the rest automatic" if auto else "")


def right_of(metrics: Mapping[str, Any], short: bool = False) -> str:
    """A run's accuracy with what it rests on: "25 of 29 right (86%)"; short: "25/29 right"."""
    acc, n = metrics.get("accuracy"), metrics.get("n_valid")
    if acc is None:
        return "no accuracy yet"
    if not n:
        return f"{acc:.1%} right"
    right = round(acc * n)
    return f"{right}/{n} right" if short else f"{right} of {n} right ({acc:.0%})"


# ---------------------------------------------------------------- workshop and images


def counts_block(counts: Mapping[str, int], target: Optional[int] = None) -> str:
    width = max((len(code(k)) for k in counts), default=5)
    lines = []
    for label, n in counts.items():
        label = code(label)
        lines.append(f"{label:<{width}}  {bar(n, target)} {n}/{target}" if target else f"{label:<{width}}  {n:>4}")
    return "```\n" + ("\n".join(lines) or "(no labels)") + "\n```"


def reasons_line(reasons: Mapping[str, int]) -> str:
    if not reasons:
        return ""
    parts = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return "Refused: " + ", ".join(f"{n} {REJECT_REASONS.get(r, r)}" for r, n in parts)


def download_progress(labels: Sequence[Any], *, done: bool = False, note: str = "") -> str:
    """labels: DownloadProgress-like objects (label, stored, rejected, target, reasons)."""
    width = max((len(code(p.label)) for p in labels), default=5)
    rows = [f"{code(p.label):<{width}}  {bar(p.stored, p.target)} {p.stored}/{p.target}"
            + (f"  ({p.rejected} refused)" if p.rejected else "") for p in labels]
    reasons: dict[str, int] = {}
    for p in labels:
        for r, n in p.reasons:
            reasons[r] = reasons.get(r, 0) + n
    head = "**Download finished**" if done else "**Downloading images…**"
    body = "\n".join(x for x in (head, "```\n" + "\n".join(rows) + "\n```", reasons_line(reasons), note) if x)
    return clip(body)


# ---------------------------------------------------------------- training


def epoch_table(epochs: Iterable[Mapping[str, Any]]) -> str:
    rows = [f"{'epoch':>5} {'phase':<8} {'train':>7} {'valid':>7} {'acc':>6} {'time':>6}"]
    for e in epochs:
        rows.append(f"{e['epoch']:>5} {e['phase']:<8} {e['train_loss']:>7.4f} {e['valid_loss']:>7.4f} "
                    f"{e['accuracy']:>6.3f} {seconds(e['seconds']):>6}")
    return "```\n" + "\n".join(rows) + "\n```"


def train_status(run_id: int, *, state: str, epochs: Sequence[Mapping[str, Any]] = (), stage: str = "",
                 batch: tuple[int, int] = (0, 0), epoch: tuple[int, int] = (0, 0), eta: Optional[float] = None,
                 position: Optional[int] = None, recipe: str = "") -> str:
    lines = [f"**Run {run_id}** — {state}"]
    if position:
        lines[0] += f" (position {position} in the queue)"
    if recipe:
        lines.append(f"Automatic recipe: {recipe}")  # the job's own words: no user text in it
    if stage:
        lines.append(stage)
    if epoch[1]:
        lines.append(f"epoch {epoch[0]}/{epoch[1]}  {bar(*batch)} batch {batch[0]}/{batch[1]}"
                     + (f"  ETA {seconds(eta)}" if eta is not None else ""))
    if epochs:
        lines.append(epoch_table(epochs))
    return clip("\n".join(lines))


def runs_list(runs: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    if not runs:
        return "No runs yet; a host can start one with `/train`."
    lines = []
    for r in runs[-15:]:
        m = r.get("metrics") or {}
        size = len((r.get("snapshot") or {}).get("items") or [])
        acc = right_of(m, short=True) if "accuracy" in m else r["status"]
        who = names.get(str(r.get("requested_by")), "someone")
        when = (r.get("finished_at") or r.get("created_at") or "")[:16].replace("T", " ")
        params = r.get("params") or {}
        arch = "automatic recipe" if "arch" in (params.get("auto") or ()) else params.get("arch", "?")
        lines.append(f"run {r['id']}: {acc}, {size} images, {arch}, "
                     f"{when} UTC, by {who}" + (" (retrain)" if r.get("parent_run_id") else ""))
    return clip("\n".join(lines))


def where_line(info: Mapping[str, Any]) -> str:
    """Where training runs, from an executor's describe()."""
    if info.get("kind") != "dask":
        slots = info.get("slots", 1)
        return f"Training runs on this host ({slots} at a time)."
    head = f"Training runs on the GPU cluster at `{code(info.get('address', '?'))}`"
    if info.get("slow"):
        return f"{head}, which did not answer in time; runs wait until it does."
    if info.get("error"):
        return f"{head}, which is not reachable now; runs fail until it is back."
    workers = info.get("workers") or []
    if not workers:
        return f"{head}: no worker is connected, so runs wait for a GPU worker."
    parts = [f"{plain(w['name'])} ({w['gpus']} GPU{'s' if w['gpus'] != 1 else ''}, {'busy' if w['busy'] else 'idle'})"
             for w in workers[:10]]
    more = f" and {len(workers) - 10} more" if len(workers) > 10 else ""
    return f"{head}: " + ", ".join(parts) + more + "."


def suspects_line(run: Mapping[str, Any], n_suspects: int) -> str:
    """After a run: how many images its check found suspect."""
    scoring = run.get("scoring") or {}
    if scoring.get("error"):
        return f"Checking the images for mistakes failed ({plain(scoring['error'][:200])}); the model itself is fine."
    if not scoring.get("scored"):
        return ""
    if not n_suspects:
        return f"Checked all {scoring['scored']} images: none looks mislabelled, off-topic or duplicated."
    return (f"Checked all {scoring['scored']} images: {n_suspects} may be mislabelled, off-topic or duplicated. "
            "A host can put them up for a vote, most likely first, with `/clean post`.")


def clean_intro(run_id: int, shown: int, asked: int, available: int, quorum: int, in_thread: bool) -> str:
    """The message that opens a round of votes."""
    head = (f"Voting on {shown} suspect images from run {run_id}, the most likely mistakes first"
            + (" (in the thread below)" if in_thread else "") + ".")
    if shown < asked:
        head += f" You asked for {asked}, but only {available} suspect images are left to vote on."
    return (f"{head} React on each one: ✅ keep, 🗑️ delete, or the number of the right label. With at least "
            f"{quorum} votes a majority decides; ties keep. A host closes the vote with `/clean apply`.")


# ---------------------------------------------------------------- voting


def choice_emoji(labels: Sequence[str]) -> dict[str, str]:
    """{emoji: choice} for a vote message: keep, delete and one number per label."""
    out = {KEEP_EMOJI: KEEP, DELETE_EMOJI: DELETE}
    out.update({LABEL_EMOJI[i]: RELABEL + label for i, label in enumerate(labels[:MAX_RELABEL_CHOICES])})
    return out


def vote_text(cand: Mapping[str, Any], labels: Sequence[str], votes: Mapping[str, Iterable[str]],
              outcome: str = "") -> str:
    """A vote message's text (its embed holds the image and the legend): the tally, and the outcome once closed.
    A vote edits only this text, so the image stays as it was posted."""
    counts = tally(votes)
    shown = {e: counts.get(c, 0) for e, c in choice_emoji(labels).items()}
    tally_line = " ".join(f"{e} {n}" for e, n in shown.items() if n) or "no votes yet"
    text = f"**Vote {cand['id']}** · Votes ({len(votes)} people): {tally_line}"
    if outcome:
        text += f"\n**Closed:** {outcome}"
    return clip(text)


def outcome_text(result: Mapping[str, Any]) -> str:
    if result["action"] == "delete":
        return f"deleted ({result['votes']} of {result['voters']} votes)"
    if result["action"] == "relabel":
        return (f"relabelled {plain(result['old_label'])} → {plain(result['label'])} ({result['votes']} of "
                f"{result['voters']} votes)")
    return f"kept ({plain(result['why'] or 'majority keep')})"


def apply_summary(summary: Mapping[str, Any]) -> str:
    lines = [f"**Clean-up applied**: {summary['deleted']} deleted, {summary['relabelled']} relabelled, "
             f"{summary['kept']} kept. `/clean undo` reverts it; `/retrain` trains on the cleaned data."]
    for r in summary["results"]:
        lines.append(f"• image {r['image_id']}: {outcome_text(r)}")
    return clip("\n".join(lines))
