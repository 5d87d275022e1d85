"""What /train asks for: the shipped defaults leave everything to the automatic recipe; options and settings fix
what they name. And the words the channel sees for them."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from bot import render
from bot.exts.training import Training, check_epochs
from imgcls.errors import InvalidInput
from bot.settings import Settings, SettingsError, check
from imgcls.runs import RunParams

import pytest


def params(settings: Settings, arch=None, epochs=None, size=None) -> RunParams:
    return Training.params_for(SimpleNamespace(bot=SimpleNamespace(settings=settings)), arch, epochs, size)


def test_the_shipped_defaults_leave_everything_to_the_automatic_recipe():
    s = Settings()
    p = params(s)
    assert p.auto == ("arch", "size", "epochs") and p.budget == s.train_budget == 300
    assert p.max_epochs == s.max_epochs
    assert render.recipe_brief(p) == "automatic recipe"


def test_options_and_settings_fix_what_they_name():
    p = params(Settings(), arch="lite2")
    assert p.auto == ("size", "epochs") and p.arch == "lite2"
    assert render.recipe_brief(p) == "lite2, the rest automatic"
    p = params(replace(Settings(), default_size=160), epochs=1)
    assert p.auto == ("arch",) and (p.size, p.epochs) == (160, 1)
    assert render.recipe_brief(p) == "1 epoch, 160 px, the rest automatic"
    p = params(Settings(), arch="lite0", epochs=3, size=224)
    assert p.auto == () and render.recipe_brief(p) == "lite0, 3 epochs, 224 px"


def test_accuracy_says_how_many_images_it_rests_on():
    assert render.right_of({"accuracy": 25 / 29, "n_valid": 29}) == "25 of 29 right (86%)"
    assert render.right_of({"accuracy": 25 / 29, "n_valid": 29}, short=True) == "25/29 right"
    assert render.right_of({"accuracy": 0.5}) == "50.0% right"  # a run recorded without its count


def test_a_queued_automatic_run_is_listed_as_automatic_not_as_a_placeholder():
    row = {"id": 3, "status": "queued", "params": {"arch": "lite0", "auto": ["arch", "size", "epochs"]},
           "snapshot": {"items": [[1, "a"]] * 4}, "metrics": None, "created_at": "2026-12-02T10:00"}
    assert "automatic recipe" in render.runs_list([row], {}) and "lite0" not in render.runs_list([row], {})


@pytest.mark.parametrize("env, needle", [
    ({"train_budget": 5}, "TRAIN_BUDGET"),
    ({"train_budget": 4000, "train_timeout": 3600}, "under TRAIN_TIMEOUT"),
    ({"default_epochs": 50, "max_epochs": 20}, "DEFAULT_EPOCHS"),
    ({"default_size": 20}, "DEFAULT_SIZE"),
    ({"default_arch": "vgg"}, "DEFAULT_ARCH must be auto"),
])
def test_bad_recipe_settings_are_refused_with_a_reason(env, needle):
    with pytest.raises(SettingsError, match=needle):
        check(replace(Settings(discord_token="x"), **env))


def test_an_automatic_train_is_not_refused_under_a_small_epoch_cap():
    s = replace(Settings(), max_epochs=2)
    p = params(s)
    check_epochs(p, s.max_epochs)  # the placeholder epochs are not the recipe's: no refusal
    assert p.max_epochs == 2  # the recipe gets the cap instead
    with pytest.raises(InvalidInput, match="at most 2 epochs"):
        check_epochs(params(s, epochs=3), s.max_epochs)
