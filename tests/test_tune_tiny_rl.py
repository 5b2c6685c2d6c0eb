"""experiments/tools/tune_tiny_rl.py: its variant syntax, and the recorded sweep it documents."""

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "experiments" / "tools"))

import tune_tiny_rl


def test_a_variant_is_a_name_and_config_overrides():
    assert tune_tiny_rl.parse_variant("lr3e4=optimizer.schedule.peak=3e-4 train.steps_per_iteration=80") == (
        "lr3e4", {"optimizer.schedule.peak": "3e-4", "train.steps_per_iteration": "80"})
    assert tune_tiny_rl.parse_variant("base=") == ("base", {})
    with pytest.raises(ValueError, match="not key=value"):
        tune_tiny_rl.parse_variant("bad=steps")
    with pytest.raises(ValueError, match="NAME=OVERRIDES"):
        tune_tiny_rl.parse_variant("no name here")


def test_the_recorded_sweep_has_its_curves():
    """Every recorded run starts at its SFT policy's accuracy and its `after` is its last evaluation."""
    runs = json.loads((REPO / "experiments" / "results" / "tiny_rl_tuning.json").read_text())["runs"]
    assert runs
    for r in runs:
        curve = {int(k): v for k, v in r["accuracy"].items()}
        assert curve[0] == r["before"]
        assert r["best"] == max(curve.values())
        if r["status"] == "completed":
            assert r["after"] == curve[max(curve)]
