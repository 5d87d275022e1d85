"""Embeds the bot posts, as Discord's embed dicts: plain functions of plain data, like bot/render.py.

    files = {"confusion": "run3-confusion.png", "top_losses": "run3-top-losses.png"}
    embeds = run_results(run, suspects="…", files=files)     # [dict, …], within Discord's limits
    await channel.send(embeds=[discord.Embed.from_dict(e) for e in embeds], files=[…])

Images are the message's own files, referenced as `attachment://name`. Every function ends in
`fit()`, which clips each text to Discord's limit and the whole message to 6,000 characters, so
a long label or a flood of cleaned images can never make Discord refuse a message. User text
(labels, names, credits) goes through render.plain(): no mention, no markdown trickery.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from imgcls.cleaning import RELABEL

from .render import choice_emoji, code, epoch_table, flat, plain, right_of, seconds

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits)
TITLE, DESCRIPTION, FIELDS, FIELD_NAME, FIELD_VALUE, FOOTER, AUTHOR, TOTAL, PER_MESSAGE = (
    256, 4096, 25, 256, 1024, 2048, 256, 6000, 10)
BLUE, GREEN, ORANGE, GREY, PURPLE = 0x3B82F6, 0x22C55E, 0xF59E0B, 0x94A3B8, 0x8B5CF6
RIGHT_EMOJI, WRONG_EMOJI = "✅", "❌"
EPOCH_ROWS = 12  # the last epochs in a results embed: a table of 12 rows fits a field (1,024 characters)


def attach(name: str) -> str:
    return f"attachment://{name}"


def _cut(text: Any, limit: int) -> str:
    text = str(text or "").strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def size(embeds: Sequence[Mapping[str, Any]]) -> int:
    """The characters Discord counts against the 6,000 per message: titles, descriptions, fields, footers, authors."""
    n = 0
    for e in embeds:
        n += len(str(e.get("title") or "").strip()) + len(str(e.get("description") or "").strip())
        n += sum(len(str(f.get("name") or "").strip()) + len(str(f.get("value") or "").strip())
                 for f in e.get("fields") or [])
        n += len(str((e.get("footer") or {}).get("text") or "").strip())
        n += len(str((e.get("author") or {}).get("name") or "").strip())
    return n


def fit(embeds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The embeds within every limit: each text clipped, 25 fields, 10 embeds, 6,000 characters in all (the last
    fields and descriptions give way first). Empty field values become "—" (Discord refuses empty ones)."""
    out = []
    for e in list(embeds)[:PER_MESSAGE]:
        e = dict(e)
        if e.get("title"):
            e["title"] = _cut(e["title"], TITLE)
        if e.get("description"):
            e["description"] = _cut(e["description"], DESCRIPTION)
        e["fields"] = [{"name": _cut(f["name"], FIELD_NAME) or "—", "value": _cut(f["value"], FIELD_VALUE) or "—",
                        "inline": bool(f.get("inline"))} for f in (e.get("fields") or [])[:FIELDS]]
        if not e["fields"]:
            del e["fields"]
        if e.get("footer"):
            e["footer"] = {**e["footer"], "text": _cut(e["footer"].get("text"), FOOTER)}
        if e.get("author"):
            e["author"] = {**e["author"], "name": _cut(e["author"].get("name"), AUTHOR)}
        out.append(e)
    while out and size(out) > TOTAL:
        _shrink(out, size(out) - TOTAL)
    return out


def _shrink(out: list[dict[str, Any]], over: int) -> None:
    """Take `over` characters (or as many as one step can) off the end: a whole later embed, then the last embed's
    last field, its description, footer, author and at last its title. Every call removes something, so fit()
    always ends."""
    last = out[-1]
    if len(out) > 1 and (size(out[:-1]) >= TOTAL or size([last]) <= over):
        out.pop()
        return
    if last.get("fields"):
        f = last["fields"][-1]
        if len(f["value"]) > over + 40 and not f["value"].startswith("```"):  # a code block is never cut open
            f["value"] = _cut(f["value"], len(f["value"]) - over)
        else:
            last["fields"].pop()
            if not last["fields"]:
                del last["fields"]
        return
    for key, holder, name in (("description", last, "description"), ("footer", last.get("footer"), "text"),
                              ("author", last.get("author"), "name"), ("title", last, "title")):
        text = (holder or {}).get(name)
        if not text:
            continue
        if len(text) > over + 1:
            holder[name] = _cut(text, len(text) - over)
        else:
            del last[key]
        return
    out.pop()  # nothing left to shorten in it


def _field(name: str, value: str, inline: bool = False) -> dict[str, Any]:
    return {"name": name, "value": value, "inline": inline}


# ---------------------------------------------------------------- results


def confused_value(most_confused: Sequence[Sequence[Any]], limit: int = 5) -> str:
    if not most_confused:
        return "No mix-ups in the validation set."
    return "\n".join(f"{plain(a)} → {plain(b)}: {n}×" for a, b, n in most_confused[:limit])


def run_results(run: Mapping[str, Any], *, suspects: str = "", files: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    """A finished run: accuracy, epochs and mix-ups in fields, the confusion matrix inline; top losses and the
    learning curve as two more embeds when their files are attached. `files`: artefact name -> attachment name."""
    m, params = run.get("metrics") or {}, run.get("params") or {}
    main = {
        "title": f"Run {run['id']} finished: {right_of(m)}",
        "description": (f"On {m.get('n_valid', '?')} validation images it never trained on. "
                        + (suspects or "")).strip(),
        "color": GREEN,
        "fields": [
            _field("Accuracy", f"**{right_of(m, short=True)}** ({m.get('accuracy', 0):.1%})", True),
            _field("Images", f"{m.get('n_train', '?')} train · {m.get('n_valid', '?')} valid", True),
            _field("Model", f"{code(params.get('arch', '?'))}, {params.get('size', '?')} px, "
                            f"{seconds(m.get('seconds'))}", True),
            *([_field("Recipe", f"Automatic: {params['recipe']}")] if params.get("recipe") else []),
            _field("Epochs", epoch_table((run.get("epochs") or [])[-EPOCH_ROWS:])),
            _field("Most confused", confused_value(run.get("most_confused") or [])),
        ],
    }
    if files.get("confusion"):
        main["image"] = {"url": attach(files["confusion"])}
    out = [main]
    if files.get("top_losses"):
        out.append({"title": "Top losses", "color": GREEN, "image": {"url": attach(files["top_losses"])},
                    "description": "The validation images it was most confidently wrong about: "
                                   "prediction / actual / loss / probability."})
    if files.get("learning_curve"):
        out.append({"title": "Learning curve", "color": GREEN, "image": {"url": attach(files["learning_curve"])},
                    "description": "Loss per epoch on the training and the validation images: lower is better."})
    return fit(out)


def recipe_words(params: Mapping[str, Any]) -> str:
    """A run's recipe in a few words: "lite0, 192 px squish, 1+4"."""
    tfm = {"squish": " squish", "random_resized_crop": " random crops"}.get(params.get("item_tfm", "resize"), "")
    return (f"{params.get('arch', '?')}, {params.get('size', '?')} px{tfm}, "
            f"{params.get('freeze_epochs', 1)}+{params.get('epochs', '?')}")


def before_after(before: Mapping[str, Any], after: Mapping[str, Any], changes: Sequence[Mapping[str, Any]],
                 diff: Any = None, image: str = "") -> list[dict[str, Any]]:
    """Before/after cleaning, or a new recipe, or both. diff: an imgcls.compare.Comparison (both models on the same
    images) or None."""
    m0, m1 = before.get("metrics") or {}, after.get("metrics") or {}
    a0, a1 = m0.get("accuracy", 0.0), m1.get("accuracy", 0.0)
    r0, r1 = recipe_words(before.get("params") or {}), recipe_words(after.get("params") or {})
    what = ("cleaning and a new recipe" if changes and r0 != r1 else "a new recipe" if r0 != r1 else "cleaning")
    fields = []
    if diff is not None and diff.n:
        delta = (diff.after_accuracy - diff.before_accuracy) * 100
        title = (f"Before/after {what}: {diff.before_right} → {diff.after_right} of {diff.n} right "
                 f"({delta:+.1f} points)")
        desc = (f"Both models on the same {diff.n} validation images, with the labels they have now: run "
                f"{before['id']}'s got **{diff.before_right} of {diff.n}** right, run {after['id']}'s "
                f"**{diff.after_right} of {diff.n}**.")
        fields.append(_field("Each run's own figure", f"run {before['id']}: {right_of(m0)} as labelled then\n"
                                                      f"run {after['id']}: {right_of(m1)}"))
        fields.append(_field("Wrong → right", _images(diff.fixed, "was") or "none", True))
        fields.append(_field("Right → wrong", _images(diff.broken, "now") or "none", True))
    else:
        title = (f"Before/after {what}: {right_of(m0, short=True)} → {right_of(m1, short=True)} "
                 f"({(a1 - a0) * 100:+.1f} points)")
        desc = (f"Run {before['id']} against run {after['id']}, each on its own validation images: "
                f"{right_of(m0)} before, {right_of(m1)} after.")
    n0 = len((before.get("snapshot") or {}).get("items") or [])
    n1 = len((after.get("snapshot") or {}).get("items") or [])
    fields.insert(0, _field("Dataset", f"{n0} → {n1} images", True))
    if r0 != r1:
        fields.insert(1, _field("Recipe", f"{r0} → {r1}", True))
    fields.append(_field("What the group changed", changes_value(changes)))
    out = {"title": title, "description": desc, "color": PURPLE, "fields": fields}
    if image:
        out["image"] = {"url": attach(image)}
    return fit([out])


def _images(items: Sequence[Sequence[Any]], word: str, limit: int = 10) -> str:
    shown = ", ".join(f"#{i} {plain(label)} ({word} {plain(other)})" for i, label, other in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def changes_value(changes: Sequence[Mapping[str, Any]], limit: int = 15) -> str:
    if not changes:
        return "No images were cleaned between the two runs."
    lines = []
    for c in changes[:limit]:
        if c["action"] == "delete":
            lines.append(f"#{c['image_id']} deleted")
        elif c["action"] == "add":
            lines.append(f"#{c['image_id']} added as a stumper ({plain(c.get('current_label') or '?')})")
        else:
            lines.append(f"#{c['image_id']} {plain(c['old'])} → {plain(c['new'])}")
    if len(changes) > limit:
        lines.append(f"…and {len(changes) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------- votes


def legend_value(labels: Sequence[str]) -> str:
    return " · ".join(f"{e} {plain(c[len(RELABEL):]) if c.startswith(RELABEL) else c}"
                      for e, c in choice_emoji(labels).items())


def candidate(cand: Mapping[str, Any], legend: Sequence[str], credit: str = "", image: str = "") -> list[dict]:
    """A vote on one suspect image: the image, why it is suspect, the reactions to use. The tally goes in the
    message's text (render.vote_text), so a vote edits only the text and the image stays as posted."""
    if cand.get("reason"):  # written with render.emphasis(): its labels are escaped already
        why = f"Image {cand['image_id']}: {cand['reason']}."
    else:
        why = (f"Image {cand['image_id']}, labelled **{plain(cand['label'])}**; the model says "
               f"**{plain(cand['predicted'])}** ({cand.get('probability') or 0:.0%}).")
    e = {"title": f"Vote {cand['id']}", "description": why, "color": ORANGE,
         "fields": [_field("React to vote", legend_value(legend))]}
    if image:
        e["image"] = {"url": attach(image)}
    if credit:
        e["footer"] = {"text": flat(credit)}
    return fit([e])


# ---------------------------------------------------------------- predictions


def prediction(pred: Any, threshold: float, name: str = "", image: str = "") -> list[dict[str, Any]]:
    """A classify answer: the verdict, the top 3 with bars, the pasted image as a thumbnail."""
    sure = pred.probability >= threshold
    title = (f"That looks like {plain(pred.label)}" if sure
             else f"Not sure: my best guess is {plain(pred.label)} ({pred.probability:.0%})")
    rows = "\n".join(f"{i + 1}. **{plain(label)}** {_bar(p)} {p:.1%}" for i, (label, p) in enumerate(pred.top))
    e = {"title": title, "description": rows, "color": BLUE if sure else GREY,
         "footer": {"text": (f"{flat(name[:80])} · " if name else "") + f"model from run {pred.run_id} · react "
                            f"{RIGHT_EMOJI} right or {WRONG_EMOJI} wrong"}}
    if image:
        e["thumbnail"] = {"url": attach(image)}
    return fit([e])


def _bar(p: float, width: int = 10) -> str:
    filled = round(width * max(0.0, min(1.0, p)))
    return "▰" * filled + "▱" * (width - filled)


# ---------------------------------------------------------------- the guide and the leaderboard


def guide_step(step: Any, number: int, total: int, top: Sequence[Any] = (), intro: str = "",
               done: str = "", names: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    """The next step of the plan: what to do, the command, what it means; the top three so far, briefly."""
    command = f"`{step.command}`" + (" (a host)" if step.who == "host" else "")
    desc = "\n\n".join(x for x in (intro, f"{step.do}\n{command}", step.why) if x)
    e = {"title": f"Step {number} of {total}: {step.title}", "description": desc, "color": BLUE}
    if done:
        e["author"] = {"name": done}
    if top_three(top):
        e["fields"] = [_field("Top helpers so far", top_three(top, names))]
    return fit([e])


def finale(text: str, top: Sequence[Any] = (), names: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    e = {"title": "Workshop complete 🎉", "description": text, "color": GREEN}
    if top_three(top):
        e["fields"] = [_field("Top helpers", top_three(top, names))]
    return fit([e])


def who(user_id: str, names: Mapping[str, str]) -> str:
    """A participant by the name the server shows (escaped: a name is user text), else as a mention, which an
    embed shows but never pings."""
    name = names.get(str(user_id))
    return f"**{plain(name)}**" if name else f"<@{int(user_id)}>"


def top_three(rows: Sequence[Any], names: Mapping[str, str] = {}) -> str:
    medals = ("🥇", "🥈", "🥉")
    shown = [r for r in rows if r.points > 0 and str(r.user_id).isdigit()][:3]
    return "\n".join(f"{medal} {who(r.user_id, names)} {r.points} pts" for medal, r in zip(medals, shown))


def plan_value(plan: Sequence[tuple[Any, str]]) -> str:
    marks = {"done": "✅", "next": "➡️", "later": "▫️"}
    return "\n".join(f"{marks[st]} {n}. {s.title}" + (f" · `{s.command}`" if st == "next" else "")
                     for n, (s, st) in enumerate(plan, 1))


def plan(plan: Sequence[tuple[Any, str]], intro: str = "", guide_on: bool = True) -> list[dict[str, Any]]:
    e = {"title": "The plan", "description": "\n\n".join(x for x in (intro, plan_value(plan)) if x), "color": BLUE}
    if not guide_on:
        e["footer"] = {"text": "The guide is off: a host turns it on with /workshop guide on:True"}
    return fit([e])


def leaderboard(rows: Sequence[Any], server: str, names: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    """Standings in this server: images kept, votes cast (and agreed), stumpers found."""
    if not rows:
        desc = ("Nobody has scored yet. Add photos with `/images add`, vote on `/clean post` images, and stump the "
                "model with `/predict`.")
    else:
        lines = []
        for n, r in enumerate(rows, 1):
            if not str(r.user_id).isdigit():
                continue
            lines.append(f"**{n}.** {who(r.user_id, names)} · **{r.points}** pts · {r.images} image"
                         f"{'s' if r.images != 1 else ''} · {r.votes} vote{'s' if r.votes != 1 else ''} "
                         f"({r.agreed} agreed) · {r.stumpers} stumper{'s' if r.stumpers != 1 else ''}")
        desc = "\n".join(lines)
    return fit([{"title": f"Leaderboard: {plain(server)}", "description": desc, "color": PURPLE,
                 "footer": {"text": "1 point per image still in the dataset and per vote that agreed with the "
                                    "decision; 3 per stumper. This server only."}}])
