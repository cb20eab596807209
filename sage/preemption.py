"""SIGTERM (what a cluster sends before preemption): stop at the next clean boundary, keep the work, exit.

A cluster sends SIGTERM 30-120 s before SIGKILL. Before any work worth keeping has started (models
loading, workers starting), `sage` exits at once. After that the signal only sets a flag, and each long
phase stops at its next boundary:

- a rollout (training or evaluation) at its next turn boundary: `sage fit` keeps the turns played so
  far in ``<run>/epoch_data/`` and a resumed run replays their actions in fresh environments and plays
  on with the sampler state it stopped with (`sage.rollout.loop`);
- a teacher-data round (``data.source: dagger``) at its next turn boundary; it is seeded, so a resumed run
  replays it whole and gets the same data;
- the judge and teacher passes at their next batch (the epoch's rollout is already kept; they rerun), and
  the evaluation KL scoring at its next batch;
- training at the end of the current optimizer step (an exact-resume checkpoint cannot hold a half
  accumulated gradient).

`sage fit` then writes ``last.ckpt`` (`sage.checkpointing.LastCheckpoint`) and both commands exit with
code 143 (128 + SIGTERM) and one line saying what was kept. Lightning's own SIGTERM handling stops after
any micro-batch, mid optimizer step, and writes nothing; `SageTrainer` keeps its loops out of it.
Under DDP the flag is agreed on at optimizer-step boundaries only (ranks play different numbers of turns).
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import lightning as L
import torch
import torch.distributed as dist

from sage.distributed import world
from sage.plan import ends_step

EXIT_CODE = 128 + signal.SIGTERM

_state = {"requested_at": None, "working": False, "installed": False}


class Preempted(Exception):
    """Raised where a run stops after SIGTERM (``where``: e.g. "in the judge pass"); `Preemption` adds
    what it wrote (``outcome``) and `sage.cli.main` prints the whole as one line."""

    def __init__(self, where: str, outcome: str = "") -> None:
        super().__init__(where)
        self.where, self.outcome = where, outcome

    def __str__(self) -> str:
        return f"stopped by SIGTERM {self.where}{self.outcome}"


def requested() -> bool:
    """Whether SIGTERM arrived (this process)."""
    return _state["requested_at"] is not None


def seconds_since_request() -> float:
    return time.monotonic() - _state["requested_at"] if requested() else 0.0


def work_started() -> None:
    """From now on SIGTERM only sets the flag: there is work (turns played, steps trained) to keep."""
    _state["working"] = True


def reset() -> None:
    """Forget an earlier request (a new run in the same process, e.g. tests)."""
    _state.update(requested_at=None, working=False)


def _on_sigterm(signum, frame) -> None:
    if requested():  # a repeat (e.g. the group's signal, then `sage experiment` forwarding its own): in hand
        return
    _state["requested_at"] = time.monotonic()
    if not _state["working"]:
        raise Preempted("before the first turn was played")
    print("sage: SIGTERM: stopping at the next turn or optimizer-step boundary, then saving", file=sys.stderr,
          flush=True)


def install() -> None:
    """Take SIGTERM for this process (main thread only; Lightning runs its own handler after ours)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        _state["installed"] = True


def stop_now() -> bool:
    """A single-process phase (rollout turn, judge or teacher batch) should stop here. Under DDP these
    phases run different numbers of iterations per rank, so only `Preemption` (at step ends) decides."""
    return requested() and world()[1] == 1


class SageTrainer(L.Trainer):
    @property
    def received_sigterm(self) -> bool:
        """Always False: Lightning's loops would stop on SIGTERM after any micro-batch, mid optimizer step,
        without a checkpoint; `sage.preemption` chooses the boundary instead (module docstring)."""
        return False


class Preemption(L.Callback):
    """Stops training at the end of an optimizer step after SIGTERM and writes ``last.ckpt``; on any
    `Preempted` raised elsewhere in `fit` (a rollout or annotation stopped) writes it too."""

    def _agreed(self, trainer) -> bool:
        flag = requested()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([float(flag)], device=trainer.strategy.root_device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        work_started()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if ends_step(batch) and self._agreed(trainer):
            raise Preempted(f"at the end of optimizer step {trainer.global_step}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, Preempted):
            return
        if trainer.state.fn != "fit":
            exception.outcome = f", {seconds_since_request():.1f} s after the signal; no results written"
            return
        if not _state["working"]:  # models may be half built: nothing to save, and nothing was done
            exception.outcome = "; nothing was played or trained, so nothing was written"
            return
        from sage.checkpointing import LastCheckpoint

        ckpt = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.enabled), None)
        if ckpt is None:
            exception.outcome = "; checkpoint.enabled is false, so no checkpoint was written"
            return
        path = ckpt.save(trainer)
        exception.outcome = (f", {seconds_since_request():.1f} s after the signal; wrote {path}; "
                             f"resume: the same command plus --ckpt_path {path}")
