"""The teacher shipped inside the package loads offline under its alias and acts: its greedy first action
on bundled games, in configs/base.yaml's prompt, is an admissible command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from sage.envs import EnvPool, PromptBuilder, PromptTemplate
from sage.models import load_model, load_tokenizer
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import rollout
from sage.shipped import BIAS_ATTR, CALIBRATION, SHIPPED, judge_calibration
from sage.specs import RolloutSpec

BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


def test_the_shipped_adapter_is_small_and_names_no_machine_path():
    folder = SHIPPED["smollm2-135m-alfworld"][1]
    weights = folder / "adapter_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 25 * 2**20
    config = (folder / "adapter_config.json").read_text()
    assert '"base_model_name_or_path": "smollm2-135m-instruct"' in config


def test_the_shipped_judge_calibration_belongs_to_the_shipped_adapter():
    folder = SHIPPED["smollm2-135m-alfworld"][1]
    calibration = json.loads((folder / CALIBRATION).read_text())
    assert calibration["adapter_sha256"] == hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    offsets = judge_calibration("smollm2-135m-alfworld")["SKIP,WEAK,STRONG"]
    assert offsets["SKIP"] == 0.0 and all(abs(v) <= 6 for v in offsets.values())


@pytest.mark.slow
def test_the_shipped_teacher_acts_admissibly_on_bundled_games(bundled_games):
    data = yaml.safe_load(BASE.read_text())["data"]
    assert yaml.safe_load(BASE.read_text())["model"]["teacher"]["name_or_path"] == "smollm2-135m-alfworld"
    tok = load_tokenizer("smollm2-135m-alfworld")
    model = load_model("smollm2-135m-alfworld", trainable=False)
    assert getattr(model, BIAS_ATTR) == judge_calibration("smollm2-135m-alfworld")  # the judge reads it from here
    spec = RolloutSpec(**{**data["rollout"], "context_mode": "transcript"})
    games = [next(g for g in bundled_games["valid_seen"] if g.task_type == t)
             for t in ("pick_and_place_simple", "pick_heat_then_place_in_recep")]
    with EnvPool(num_workers=1, max_steps=1) as pool:
        episodes = rollout(HFGenerator(model, tok), pool, games, PromptBuilder(PromptTemplate(**data["prompt"])),
                           tok, spec, greedy=True)
    for ep in episodes:
        turn = ep.turns[0]
        assert turn.valid_format, turn.response_text
        assert turn.action in turn.admissible, (turn.action, turn.admissible)
