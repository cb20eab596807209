"""Save the trained student as a plain Hugging Face folder at the end of `fit`, so it can be loaded by
name anywhere a model is expected (e.g. as the teacher of a later distillation run). LoRA adapters
are merged into the base weights first, on a copy, leaving the training model untouched."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import lightning as L


def export_student(module, dirpath: str | Path) -> Path:
    """Write the folder next to its target, then swap it in: a failed or interrupted export never leaves
    a half-written model, and an earlier export at ``dirpath`` stays whole until the new one is complete."""
    out = Path(dirpath)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = module.student
        if hasattr(model, "merge_and_unload"):  # peft: merge adapters into a copy of the base model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        module.tokenizer.save_pretrained(tmp)
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp makes an owner-only folder; keep the usual permissions
            f.chmod(0o755 if f.is_dir() else 0o644)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class ExportStudent(L.Callback):
    """The weights-only export of the final student (`sage fit ... --export.enabled true`): a Hugging Face
    folder of the merged student weights and the tokenizer, ~4 bytes per parameter (no optimizer state).

    Args:
        enabled: export at the end of ``fit`` (also implied by ``dirpath``).
        dirpath: where; null = ``<run folder>/student``.
    """

    def __init__(self, enabled: bool = False, dirpath: str | None = None) -> None:
        self.enabled = enabled or dirpath is not None
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        out = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "student"  # a collective under DDP
        if trainer.is_global_zero:
            print(f"exported the student to {export_student(pl_module, out)}", flush=True)
        trainer.strategy.barrier()
