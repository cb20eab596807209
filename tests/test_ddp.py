"""Scale-out on CPU with 2 gloo processes: the step loss and gradient equal one process on all data,
and a tiny `fit` runs under Lightning's `ddp` strategy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sage.distributed import shard
from sage.module import SageModule
from sage.plan import plan_steps
from sage.samples import window_samples
from sage.specs import LossSpec, ModelSpec
from tests.helpers import make_episode, make_turn, with_teacher_pass

ROOT = Path(__file__).resolve().parents[1]


def _episodes():
    turns = [
        make_turn(k, context_ids=[1, 30 + k, 31, 32 + k], response_ids=[40 + k, 41, 42 + 2 * k][: 2 + k % 2],
                  gate=[1.0, 0.5, 0.0, 1.0, 0.5][k], confidence=[0.9, 0.3, 0.6][: 2 + k % 2])
        for k in range(5)
    ]
    return [make_episode(turns)]


def _step(module, samples, world_size):
    """One optimizer step's loss and gradient, the way training_step computes them (the plan all-reduces
    the denominators and pads the micro-batch counts across ranks)."""
    (step,) = plan_steps(samples, 100, 64, 2, module.loss_spec.normalize, seed=0)
    module.student.zero_grad()
    total = torch.zeros((), dtype=torch.float64)
    for mb in step.micro_batches:
        if not mb.padding:
            loss, _ = module.micro_loss(mb.tokens, mb.denominator)
        else:
            loss = sum(p.sum() for p in module.trainable_parameters()) * 0.0
        (loss * world_size).backward()
        total += loss.detach()
    grads = [p.grad.clone() for p in module.trainable_parameters()]
    return total, grads


def _module(normalize):
    torch.manual_seed(0)
    module = SageModule(student=ModelSpec("tiny-random", dtype="float64"),
                        teacher=ModelSpec("tiny-random", seed=1, dtype="float64"), loss=LossSpec(normalize=normalize))
    module.build_models()
    return module


def _samples(module):
    episodes = _episodes()
    return window_samples(episodes, with_teacher_pass(module.teacher, episodes, module.vocab_rows))


def _worker(rank, world_size, port, normalize, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        module = _module(normalize)
        samples = shard(_samples(module), rank, world_size)
        loss, grads = _step(module, samples, world_size)
        dist.all_reduce(loss)
        for g in grads:  # what DDP does to gradients: average over ranks
            dist.all_reduce(g)
            g /= world_size
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("normalize", ["weighted", "opd"])
def test_two_ranks_equal_one_process(tmp_path, normalize):
    out = tmp_path / "ranks.pt"
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, normalize, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    module = _module(normalize)
    loss, grads = _step(module, _samples(module), 1)
    # float64 throughout: the two-rank sums differ from one process only by rounding order
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(got["loss"], loss, rtol=256 * eps, atol=1e-13)
    for a, b in zip(got["grads"], grads, strict=True):
        torch.testing.assert_close(a, b, rtol=256 * eps, atol=1e-13)


def test_tiny_fit_under_ddp_on_two_cpu_processes(tmp_path):
    args = [
        sys.executable, "-m", "sage.cli", "fit", "--config", str(ROOT / "configs/opd.yaml"),
        "--model.student.name_or_path", "tiny-random", "--model.teacher.name_or_path", "tiny-random",
        "--model.teacher.seed", "1", "--data.train_games", "3", "--data.max_turns", "2",
        "--data.val_games", "1", "--data.env_workers", "1", "--data.rollout.max_new_tokens", "8",
        "--data.samples_per_step", "2", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.version", "v", "--trainer.default_root_dir", str(tmp_path),
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log_dir = tmp_path / "opd" / "v"
    assert (log_dir / "checkpoints" / "last.ckpt").exists()
    # ranks wrote their own shard of the epoch's episodes: 3 games -> 2 + 1
    shards = sorted((log_dir / "episodes").glob("epoch_000_rank*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in shards] == [2, 1]
    assert "val/unseen/success" in (log_dir / "metrics.csv").read_text()
