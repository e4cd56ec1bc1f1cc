"""Every module of the package imports (a missing import cannot hide in a rarely used module)."""

import importlib
import pkgutil

import pytest

import cookbook

MODULES = sorted(m.name for m in pkgutil.walk_packages(cookbook.__path__, prefix="cookbook."))


def test_the_package_has_the_expected_areas():
    for area in ("cookbook.models", "cookbook.renderers", "cookbook.datasets", "cookbook.preference.train_dpo", "cookbook.supervised.train_sft",
                 "cookbook.on_policy.train_on_policy", "cookbook.rl.train_rl", "cookbook.reward_model.train_reward_model",
                 "cookbook.recipes.reward_model.train", "cookbook.recipes.rl.train", "cookbook.registry",
                 "cookbook.eval.run_inspect_evals", "cookbook.recipes.preference.train", "cookbook.kto.train_kto", "cookbook.recipes.preference.kto", "cookbook.datasets.unpaired",
                 "cookbook.training.distributed"):
        assert area in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which it does not define"
