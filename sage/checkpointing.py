"""Checkpoints: one rolling ``last.ckpt`` per run, written atomically.

`LastCheckpoint` keeps exactly what an exact resume needs (the trainable student weights, the optimizer
state, the loop counters and the DataModule's pointer to the epoch's kept rollouts) in one file,
``<run>/checkpoints/last.ckpt``, rewritten every ``every_n_steps`` optimizer steps, at every epoch end and
when the run is preempted (`sage.preemption`). Lightning's ModelCheckpoint would keep a top-k file beside a
copy of the last one, twice the disk for the same state.

`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target folder, syncs it, then renames it
over the old one: a process killed mid-write (``kill -9``, a full disk) leaves the previous checkpoint
whole. Lightning's own writer stages the file in the system temp folder and *copies* it over when that is
another file system, which is not atomic. It reads a checkpoint (``--ckpt_path``) with
``torch.load(weights_only=True)``: the student weights, the optimizer state and the loop counters are
tensors and plain values, so nothing in the file can run code; ``--weights_only false`` lifts that for a
checkpoint from a trusted source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from sage.errors import InputError
from sage.io import atomic_path
from sage.plan import ends_step

LAST = "last.ckpt"


class CheckpointWriteError(InputError, OSError):
    """The run folder cannot take the checkpoint (not writable, disk full)."""


def atomic_write(path: str | Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, durably renamed over it (`sage.io.atomic_path`).

    Any failure leaves an earlier ``path`` as it was; an OS error (disk full, a folder that is a file)
    becomes one line naming the path."""
    try:
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as exc:
        raise CheckpointWriteError(
            f"cannot write {path}: {exc.strerror or exc}; the files already there are unchanged. "
            "Free space or choose a writable folder (trainer.default_root_dir)"
        ) from exc


class CheckpointLoadError(InputError, ValueError):
    """A checkpoint holding objects that ``torch.load(weights_only=True)`` refuses (it could run code)."""


def safe_globals() -> list:
    """The project's own types a checkpoint may hold beside tensors and plain values (specs that older
    checkpoints kept in their hyperparameters): loaded with ``weights_only=True`` all the same."""
    from sage import specs

    return [specs.ModelSpec, specs.LoraSpec]


def load_checkpoint_file(path, map_location=None, weights_only: bool | None = None) -> dict:
    """``torch.load`` of a checkpoint with ``weights_only=True`` (the default; tensors, plain values and
    `safe_globals` only, so a checkpoint from someone else cannot run code), or ``weights_only=False`` when the
    user asks for it (``--weights_only false``: the checkpoint is then code, to load only from a trusted
    source). A refused checkpoint is one line saying so."""
    import pickle

    import torch

    if weights_only is False:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise CheckpointLoadError(
            f"checkpoint {str(path)!r} holds objects beyond tensors and plain values ({why or 'see SAGE_TRACEBACK=1'}), "
            "so it is not loaded: a pickle can run code. If it comes from a source you trust, pass --weights_only "
            "false") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose writes are temp-then-rename in the checkpoint's own folder, and whose reads
    are ``weights_only=True`` unless the user says otherwise (`load_checkpoint_file`)."""

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location=map_location, weights_only=weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda f: torch.save(checkpoint, f))


class LastCheckpoint(Checkpoint):
    """One rolling ``<run>/checkpoints/last.ckpt`` (see the module docstring). A `Checkpoint`, so Lightning
    adds no ModelCheckpoint of its own and runs it after the module's epoch-end hooks, as it runs its own.

    Args:
        every_n_steps: also write it every N optimizer steps (0: only at epoch ends), so a run stopped
            mid-epoch resumes from its last multiple of N; a write of a full fine-tuned 6-layer SmolLM2
            student with AdamW state takes ~0.6 GB and a few seconds.
        enabled: false writes no checkpoint at all.
    """

    def __init__(self, every_n_steps: int = 20, enabled: bool = True) -> None:
        from sage.specs import check_range

        check_range("checkpoint.every_n_steps", every_n_steps, 0)
        self.every_n_steps = every_n_steps
        self.enabled = enabled
        self._saved_step: int | None = None

    @staticmethod
    def path(trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST

    def save(self, trainer: L.Trainer) -> Path:
        """Write last.ckpt now (every rank calls it: `Trainer.save_checkpoint` is a collective)."""
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the optimizer state too: exact resume
        self._saved_step = trainer.global_step
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        at_step_end = ends_step(batch)
        if (self.enabled and self.every_n_steps and at_step_end and step and step % self.every_n_steps == 0
                and step != self._saved_step):
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.enabled and not trainer.sanity_checking:
            self.save(trainer)
