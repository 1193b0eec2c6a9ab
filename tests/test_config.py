"""Config: every shipped recipe validates; bad keys and combinations are refused with the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit.config import load_config, parse_set
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_every_shipped_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.method.name in METHODS
    assert recipe.read_text().startswith("#"), "a recipe starts with a header comment giving its command"


def test_recipes_exist():
    assert RECIPES, "no recipes shipped"


def test_overrides_apply_with_types():
    cfg = load_config(None, parse_set(["train.lr=3e-4", "method.r=16", "data.labels=[weak, medium, strong]"]))
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.method.r == 16
    assert cfg.data.labels == ["weak", "medium", "strong"]


def test_switching_method_drops_the_other_methods_keys():
    cfg = load_config(RECIPES[0], {"method.name": "adalora"})
    assert cfg.method.name == "adalora"
    assert cfg.method.init_r == METHODS["adalora"].options().init_r


def test_all_problems_reported_together_with_suggestions():
    with pytest.raises(PeftkitError) as err:
        load_config(
            None, {"train.lrr": 1, "model.quant": "4bit", "method.name": "adalora", "method.target_r": 99}
        )
    msg = str(err.value)
    assert "unknown key 'train.lrr' (did you mean 'lr'?)" in msg
    assert "model.quant" in msg and "'none' or '8bit'" in msg
    assert "target_r (99) must not exceed init_r (12)" in msg


def test_unknown_method_lists_choices():
    with pytest.raises(
        PeftkitError, match="unknown method 'lorra'; choose one of lora, adalora, prefix, bottleneck"
    ):
        load_config(None, {"method.name": "lorra"})


def test_prefix_with_gradient_checkpointing_is_refused():
    with pytest.raises(PeftkitError, match="set train.gradient_checkpointing=false"):
        load_config(None, {"method.name": "prefix", "train.gradient_checkpointing": True})


def test_bad_set_syntax():
    with pytest.raises(PeftkitError, match="expected key=value"):
        parse_set(["train.lr"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(PeftkitError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_method_default_lr_used_when_unset():
    assert load_config(None, {"method.name": "prefix"}).lr == METHODS["prefix"].default_lr
    assert load_config(None, {"method.name": "prefix", "train.lr": 0.5}).lr == 0.5
