"""scripts/benchmark_training.py measures the shipped recipe, not a look-alike: its network, batch shape and
random transforms come from monai_bundle/configs/train.json, and its steps run."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import BUNDLE_DIR, REPO

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_training", REPO / "scripts" / "benchmark_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_recipe_is_read_from_train_json(bench):
    config = json.loads((BUNDLE_DIR / "configs" / "train.json").read_text())
    recipe = bench.read_recipe()
    assert recipe.batch_cases == config["train"]["dataloader"]["batch_size"]
    assert recipe.samples_per_case == config["num_samples"]
    assert recipe.lr == config["learning_rate"] and recipe.weight_decay == config["optimizer"]["weight_decay"]
    assert recipe.crop == (160, 160) and recipe.in_channels == 1
    network = recipe.network()
    assert list(network.channels) == config["network_def"]["channels"]
    assert type(recipe.loss()).__name__ == config["loss"]["_target_"]
    image, label = bench.random_batch(recipe)
    assert image.shape == (recipe.batch_slices, 1, 160, 160) and label.shape == (recipe.batch_slices, 1, 160, 160)
    assert 0.1 < float(label.mean()) < 0.3


def test_data_step_runs_the_real_pipeline_on_the_sample(bench):
    bench.data_step(bench.read_recipe())()  # asserts the collated batch holds batch_cases x num_samples slices


def test_a_step_runs_and_a_failure_becomes_a_table_row(bench, monkeypatch):
    recipe = bench.read_recipe()
    monkeypatch.setattr(recipe, "samples_per_case", 1)  # 4 slices: the step, not the speed, is under test
    step = bench.make_step(recipe, "channels_last")
    step()
    args = type("Args", (), {"iters": 1, "warmup": 0, "budget": 0.0})
    monkeypatch.setattr(bench, "make_step", lambda recipe, variant: (_ for _ in ()).throw(RuntimeError("no compiler")))
    rows = [{"variant": "fp32", "note": "", "median_s": 2.0, "slices_per_s": 2.0, "n": 3, "spread": 0.1},
            bench.run_variant(recipe, "compile", args)]
    text = bench.table(rows, recipe)
    assert "| fp32 | 2.000 | 2.0 | 1.00x | 3 | 10 % |" in text
    assert "| compile | failed |" in text and "RuntimeError: no compiler" in text
