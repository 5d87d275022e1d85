"""The embeds the bot posts, as plain data: within Discord's limits whatever the input, and user text
(labels, names, credits) that can never mention anyone or turn into markdown."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from simcord.components import ComponentValidationError, validate_embeds

from bot import embeds
from bot.guide import KEYS, load_guide, plan
from imgcls.compare import Comparison
from imgcls.errors import InvalidInput
from imgcls.leaderboard import Standing

HOSTILE = ["@everyone", "@here", "<@123456789012345678>", "<@&42>", "<#1>", "**bold**", "[click](http://x.io)",
           "# heading", "`code`", "||spoiler||", "-# small", "a" * 40, "🌻" * 40]


def mentions(text: str) -> list[str]:
    """What Discord would read as a mention or a mass ping in `text`."""
    return re.findall(r"@everyone|@here|<@[!&]?\d+>|<#\d+>", text)


def texts(items: list[dict]) -> str:
    out = []
    for e in items:
        out += [e.get("title", ""), e.get("description", ""), (e.get("footer") or {}).get("text", ""),
                (e.get("author") or {}).get("name", "")]
        out += [x for f in e.get("fields") or [] for x in (f["name"], f["value"])]
    return "\n".join(out)


def run(run_id: int, labels: list[str], n_items: int = 30) -> dict:
    return {"id": run_id, "params": {"arch": "lite0", "size": 224},
            "metrics": {"accuracy": 0.873, "n_valid": 60, "n_train": 240, "seconds": 95},
            "epochs": [{"epoch": i, "phase": "frozen" if i == 0 else "unfrozen", "train_loss": 1.0 / (i + 1),
                        "valid_loss": 0.9 / (i + 1), "accuracy": 0.5 + i / 40, "seconds": 12} for i in range(20)],
            "most_confused": [(a, b, 3) for a in labels for b in labels if a != b],
            "snapshot": {"items": list(range(n_items))}}


def pred(labels: list[str]):
    return SimpleNamespace(label=labels[0], probability=0.42, run_id=3,
                           top=[(label, 0.42 / (i + 1)) for i, label in enumerate(labels[:3])])


@pytest.mark.parametrize("label", HOSTILE)
def test_user_text_in_every_embed_never_mentions_anyone_and_fits(label):
    labels = [label, f"{label} 2", f"x{label}"]
    cand = {"id": 7, "image_id": 12, "label": label, "predicted": labels[1], "probability": 0.91, "reason": ""}
    changes = [{"action": "relabel", "image_id": i, "old": label, "new": labels[1], "current_label": label}
               for i in range(40)] + [{"action": "add", "image_id": 99, "current_label": label}]
    diff = Comparison(before_run=2, after_run=3, n=60, before_right=40, after_right=50, labels=tuple(labels),
                      before_confusion=(), after_confusion=(), fixed=tuple((i, label, labels[1]) for i in range(30)),
                      broken=tuple((i, labels[1], label) for i in range(30)))
    guide = load_guide()
    standing = [Standing("123", images=3, votes=4, agreed=2, stumpers=1)]
    made = {
        "results": embeds.run_results(run(3, labels), suspects="Checked all 30 images.",
                                      files={"confusion": "c.png", "top_losses": "t.png", "learning_curve": "l.png"}),
        "before_after": embeds.before_after(run(2, labels), run(3, labels, 29), changes, diff, image="ba.png"),
        "before_after_no_diff": embeds.before_after(run(2, labels), run(3, labels), changes, None),
        "candidate": embeds.candidate(cand, labels, credit=f"Photo by {label} (CC BY)", image="i.jpg"),
        "prediction": embeds.prediction(pred(labels), 0.6, name=f"{label}.jpg", image="p.jpg"),
        "guide": embeds.guide_step(guide.steps[0], 1, 8, standing, done="✅ Done: Gather images", names={"123": label}),
        "plan": embeds.plan(plan({"done": ["gather"]}, guide), guide.intro),
        "leaderboard": embeds.leaderboard(standing, server=label, names={"123": label}),
        "leaderboard_unnamed": embeds.leaderboard(standing, server="School"),
    }
    for name, items in made.items():
        validate_embeds(items)  # Discord's limits, as SimCord checks them
        assert embeds.size(items) <= embeds.TOTAL, name
        found = mentions(texts(items))
        # the only mentions are the ones the bot writes itself, for the leaderboard's people (never pinged)
        assert all(m == "<@123>" for m in found), (name, found)
        if label.startswith(("**", "[", "`", "||")):  # footers and authors show no markdown: only the rest counts
            marked = [{k: v for k, v in e.items() if k not in ("footer", "author")} for e in items]
            assert label not in texts(marked), (name, "markdown in a label must be escaped")


def test_fit_clips_every_text_and_the_whole_message():
    huge = "x" * 10_000
    items = embeds.fit([{"title": huge, "description": huge, "footer": {"text": huge}, "author": {"name": huge},
                         "fields": [{"name": huge, "value": huge}] * 40}] * 12)
    validate_embeds(items)
    assert 1 <= len(items) <= 10 and embeds.size(items) <= 6000  # later embeds give way to the first
    assert all(len(e["title"]) <= 256 and e["title"].endswith("…") for e in items)
    with pytest.raises(ComponentValidationError):  # the check itself is real: unfitted, Discord would refuse
        validate_embeds([{"description": huge}])


@pytest.mark.timeout(10)
def test_fit_ends_on_any_mix_of_embeds_and_keeps_code_blocks_whole():
    long = "y" * 3000
    cases = [
        [{"description": long, "footer": {"text": long[:2048]}}, {"description": "…", "footer": {"text": long[:2048]}}],
        [{"title": "t" * 256, "author": {"name": "a" * 256}}] * 10 + [{"description": long}] * 3,
        [{"fields": [{"name": "Epochs", "value": "```\n" + "row\n" * 240 + "```"}] * 5, "description": long}],
        [{}, {"title": "x"}],
    ]
    for items in cases:
        fitted = embeds.fit(items)
        validate_embeds(fitted)
        for e in fitted:
            for f in e.get("fields") or []:
                assert f["value"].count("```") % 2 == 0, "a code block was cut open"


def test_results_name_their_pictures_as_attachments():
    [main, top, curve] = embeds.run_results(run(1, ["a", "b"]), files={"confusion": "run1-confusion.png",
                                                                      "top_losses": "run1-top-losses.png",
                                                                      "learning_curve": "run1-learning-curve.png"})
    assert main["image"]["url"] == "attachment://run1-confusion.png"
    assert top["image"]["url"] == "attachment://run1-top-losses.png"
    assert curve["image"]["url"] == "attachment://run1-learning-curve.png"
    assert [f["name"] for f in main["fields"]] == ["Accuracy", "Images", "Model", "Epochs", "Most confused"]
    [only] = embeds.run_results(run(1, ["a", "b"]), files={})  # no pictures on disk: one embed, no broken image
    assert "image" not in only


def test_the_guide_file_has_every_step_and_bad_files_are_refused_with_a_reason(tmp_path):
    guide = load_guide()
    assert [s.key for s in guide.steps] == list(KEYS)
    bad = tmp_path / "guide.toml"
    bad.write_text('[[step]]\nkey = "train"\ntitle = "Train"\ncommand = "/train"\ndo = "Train."\n')
    with pytest.raises(InvalidInput, match="step 1 lacks why"):
        load_guide(bad)
    bad.write_text('[[step]]\nkey = "dance"\ntitle = "T"\ncommand = "/t"\ndo = "d"\nwhy = "w"\n')
    with pytest.raises(InvalidInput, match="key 'dance'"):
        load_guide(bad)
    bad.write_text("[[step]\n")
    with pytest.raises(InvalidInput, match="could not be read"):
        load_guide(bad)
    short = tmp_path / "short.toml"  # a host may drop steps, in the bot's order
    short.write_text('intro = "Hi"\n[[step]]\nkey = "gather"\ntitle = "Get pictures"\ncommand = "/images add"\n'
                     'do = "Add photos."\nwhy = "Examples."\n[[step]]\nkey = "train"\ntitle = "Train"\n'
                     'command = "/train"\ndo = "Train it."\nwhy = "Learning."\n')
    assert [s.title for s in load_guide(short).steps] == ["Get pictures", "Train"]


def test_before_after_says_what_changed_the_cleaning_the_recipe_or_both():
    labels = ["cats", "dogs"]
    a, b = run(2, labels), run(3, labels)
    b["params"] = {"arch": "lite2", "size": 224, "epochs": 4, "item_tfm": "squish"}
    changes = [{"action": "delete", "image_id": 5, "label": "cats", "who": "1"}]
    [same] = embeds.before_after(a, run(3, labels), changes, None)
    assert same["title"].startswith("Before/after cleaning: 52/60 right → 52/60 right")
    assert "Recipe" not in texts([same])
    [recipe] = embeds.before_after(a, b, [], None)
    assert recipe["title"].startswith("Before/after a new recipe: ")
    assert "lite0, 224 px, 1+? → lite2, 224 px squish, 1+4" in texts([recipe])
    [both] = embeds.before_after(a, b, changes, None)
    assert both["title"].startswith("Before/after cleaning and a new recipe: ")
