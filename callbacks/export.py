"""Save the trained student as a plain Hugging Face folder at the end of `fit`, so it can be loaded by
name anywhere a model is expected (e.g. as the teacher of a later distillation run). LoRA adapters
are merged into the base weights first, on a copy, leaving the training model untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L

from sage.io import atomic_folder


def export_student(module, dirpath: str | Path, adapter_only: bool = False) -> Path:
    """Write the folder next to its target, then swap it in: a failed or interrupted export never leaves
    a half-written model, and an earlier export at ``dirpath`` stays whole until the new one is complete.
    ``adapter_only`` (LoRA students): the adapter alone (peft's adapter_config.json + safetensors, a few MB),
    loaded later on top of the same base model."""
    out = Path(dirpath)
    with atomic_folder(out) as tmp:
        model = module.student
        if adapter_only and not hasattr(model, "peft_config"):
            raise ValueError("ExportStudent(adapter_only=True) needs a LoRA student (model.student.lora)")
        if hasattr(model, "merge_and_unload") and not adapter_only:  # peft: merge adapters into a copy
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        module.tokenizer.save_pretrained(tmp)
    return out


class ExportStudent(L.Callback):
    """The weights-only export of the final student (`sage fit ... --export.enabled true`): a Hugging Face
    folder of the merged student weights and the tokenizer, ~4 bytes per parameter (no optimizer state).

    Args:
        enabled: export at the end of ``fit`` (also implied by ``dirpath``).
        dirpath: where; null = ``<run folder>/student``.
        adapter_only: LoRA students: the adapter alone (peft's adapter_config.json + safetensors), not merged.
    """

    def __init__(self, enabled: bool = False, dirpath: str | None = None, adapter_only: bool = False) -> None:
        self.enabled = enabled or dirpath is not None
        self.dirpath = dirpath
        self.adapter_only = adapter_only

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        out = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "student"  # a collective under DDP
        if trainer.is_global_zero:
            print(f"exported the student to {export_student(pl_module, out, self.adapter_only)}", flush=True)
        trainer.strategy.barrier()
