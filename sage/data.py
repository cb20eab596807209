"""The on-policy DataModule: every epoch the current student plays fresh ALFWorld games.

`train_dataloader()` (reloaded every epoch) samples this epoch's training games, rolls them out with
the current student, lets the module gate and score the turns, and serves token-budget micro-batches
grouped into optimizer steps. `val_dataloader()` serves the seen and unseen evaluation games; the
module plays them greedily in `validation_step`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from sage.batching import build_steps, flatten_steps, transcript_samples, window_samples
from sage.distributed import align_steps, shard, world
from sage.envs import EnvPool, GameInfo, PromptBuilder, PromptTemplate, find_games
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import RolloutConfig, rollout
from sage.rollout.records import Episode

log = logging.getLogger(__name__)
SPLIT_KEYS = {"valid_seen": "seen", "seen": "seen", "valid_unseen": "unseen", "unseen": "unseen", "train": "train"}


def _identity(x):
    return x


class _EpochItems(IterableDataset):
    """An epoch's micro-batches, minus the first `done` already trained before a mid-epoch checkpoint.

    Its length stays the whole epoch's: a resumed Lightning loop restores its own batch counter to
    `done` and stops at the epoch's length, so it runs exactly the items that were not trained."""

    def __init__(self, items: list[dict], done: int = 0) -> None:
        self.items, self.done = items, done

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items[self.done :])


class SageDataModule(L.LightningDataModule):
    """ALFWorld games in, on-policy training steps out.

    Args:
        data_root: folder holding ``json_2.1.1`` (else ``$ALFWORLD_DATA``, else the bundled subset).
        train_games: games sampled (seeded by epoch) from ``train_split`` for each epoch's rollouts.
        rollout_batch: games played together in one batched rollout (None = all of this rank's games).
        val_splits / val_games: evaluation splits and games per split (None = every game once; a
            number takes games round-robin over the task types).
        val_batch: evaluation games played in one rollout (None = the rank's whole split as one stream;
            set a number only when the KV cache of a whole split does not fit).
        source: ``on_policy`` (the student plays), ``expert`` (stored walkthroughs, for SFT) or
            ``teacher`` (the teacher plays, sampled; for SFT on teacher trajectories).
        teacher_won_only: with ``source=teacher``, keep only the games the teacher won.
        samples_per_step: training samples (turns, or episodes in transcript mode) per optimizer step.
        max_tokens_per_micro_batch: padded-token budget of one forward/backward.
    """

    def __init__(
        self,
        data_root: str | None = None,
        train_split: str = "train",
        train_games: int = 16,
        rollout_batch: int | None = None,
        val_splits: list[str] | None = None,
        val_games: int | None = None,
        val_batch: int | None = None,
        source: Literal["on_policy", "expert", "teacher"] = "on_policy",
        teacher_won_only: bool = True,
        rollout: RolloutConfig | None = None,
        prompt: PromptTemplate | None = None,
        max_steps: int = 50,
        env_workers: int = 2,
        samples_per_step: int = 16,
        max_tokens_per_micro_batch: int = 8192,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("on_policy", "expert", "teacher"):
            raise ValueError(f"source={source!r}; allowed: on_policy, expert, teacher")
        self.data_root = data_root
        self.train_split = train_split
        self.train_games = train_games
        self.rollout_batch = rollout_batch
        self.val_splits = list(val_splits) if val_splits is not None else ["valid_seen", "valid_unseen"]
        for s in self.val_splits + [train_split]:
            if s not in SPLIT_KEYS:
                raise ValueError(f"unknown split {s!r}; allowed: {', '.join(SPLIT_KEYS)}")
        self.val_games = val_games
        self.val_batch = val_batch
        self.source = source
        self.teacher_won_only = teacher_won_only
        self.rollout_cfg = rollout or RolloutConfig()
        self.prompt = PromptBuilder(prompt, history_len=self.rollout_cfg.history_len)
        self.max_steps = max_steps
        self.env_workers = env_workers
        self.samples_per_step = samples_per_step
        self.max_tokens = max_tokens_per_micro_batch
        self.seed = seed
        self.pool: EnvPool | None = None
        self._own_pool = False
        self.last_episodes: list[Episode] = []
        self.generation_stats = None
        self._epoch_file: Path | None = None
        self._resume: dict | None = None
        self.last_epoch = -1

    @property
    def transcript(self) -> bool:
        return self.rollout_cfg.context_mode == "transcript"

    def split_key(self, index: int) -> str:
        return SPLIT_KEYS[self.val_splits[index]]

    def setup(self, stage: str | None = None) -> None:
        """Start the environment workers once; a pool assigned from outside (tests, notebooks) is
        used as it is and left open."""
        if self.pool is None:
            self.pool = EnvPool(num_workers=self.env_workers, max_steps=self.max_steps)
            self._own_pool = True

    def teardown(self, stage: str | None = None) -> None:
        if self.pool is not None and self._own_pool:
            self.pool.close()
            self.pool = None

    # -- playing ----------------------------------------------------------------------------------
    def play(self, games: list[GameInfo], greedy: bool, seed: int | None = None, policy=None) -> list[Episode]:
        """Roll the current student (or `policy`, another model) out on `games`, `rollout_batch` at a time."""
        self.setup()
        module = self.trainer.lightning_module
        student = module.student if policy is None else policy
        was_training = student.training
        student.eval()
        gen = HFGenerator(student, module.tokenizer, seed=self.seed if seed is None else seed)
        self.generation_stats = gen.stats  # work counters of the latest play (benchmarks, progress)
        chunk = self.rollout_batch or max(1, len(games))
        episodes: list[Episode] = []
        try:
            for i in range(0, len(games), chunk):
                episodes += rollout(gen, self.pool, games[i : i + chunk], self.prompt, module.tokenizer,
                                    self.rollout_cfg, greedy=greedy)
        finally:
            student.train(was_training)
        return episodes

    def epoch_games(self, epoch: int) -> list[GameInfo]:
        games = find_games(self.train_split, self.data_root, sample=self.train_games, seed=self.seed + epoch)
        rank, size = world()
        return shard(games, rank, size)

    def collect(self, epoch: int) -> list[Episode]:
        games = self.epoch_games(epoch)
        if self.source == "expert":
            from sage.expert import expert_episodes

            self.setup()
            tok = self.trainer.lightning_module.tokenizer
            return expert_episodes(games, self.prompt, tok, self.rollout_cfg, self.pool, chunk=self.rollout_batch)
        if self.source == "teacher":
            teacher = self.trainer.lightning_module.teacher
            if teacher is None:
                raise ValueError("data.source=teacher needs model.teacher")
            episodes = self.play(games, greedy=False, seed=self.seed + 1000 * epoch, policy=teacher)
            return [ep for ep in episodes if ep.won] if self.teacher_won_only else episodes
        return self.play(games, greedy=False, seed=self.seed + 1000 * epoch)

    # -- exact mid-epoch resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in every checkpoint: where this epoch's rollouts are kept and how many of its items
        (micro-batches) were trained, so a resumed run continues the same epoch with the same samples."""
        if self.last_epoch < 0 or self._epoch_file is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.last_epoch, "episodes_file": str(self._epoch_file), "items_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) or None

    def _epoch_path(self, epoch: int) -> Path | None:
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        if log_dir is None:
            return None
        rank, size = world()
        return Path(log_dir) / "epoch_data" / f"epoch_{epoch:03d}{f'_rank{rank}' if size > 1 else ''}.pt"

    def _episodes_for(self, epoch: int) -> tuple[list[Episode], int]:
        """This epoch's rollouts and the items already trained: kept ones when resuming this epoch,
        fresh ones (saved beside the checkpoints, atomically) otherwise."""
        resume, self._resume = self._resume, None
        if resume and resume.get("epoch") == epoch and Path(resume["episodes_file"]).is_file():
            self._epoch_file = Path(resume["episodes_file"])
            return torch.load(self._epoch_file, weights_only=False), int(resume["items_done"])
        episodes = [ep for ep in self.collect(epoch) if ep.error is None]
        self._epoch_file = self._epoch_path(epoch)
        if self._epoch_file is not None:
            self._epoch_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._epoch_file.with_suffix(".tmp")
            torch.save(episodes, tmp)
            os.replace(tmp, self._epoch_file)
        return episodes, 0

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        epoch = self.trainer.current_epoch
        # Rollout, judge and teacher scoring run under the trainer's precision (bf16-mixed: autocast),
        # as the training and validation steps already do; outside the steps Lightning applies none.
        with self.trainer.precision_plugin.forward_context():
            t0 = time.perf_counter()
            episodes, done = self._episodes_for(epoch)
            t1 = time.perf_counter()
            timings = module.annotate(episodes, transcript=self.transcript)
        samples = transcript_samples(episodes) if self.transcript else window_samples(episodes)
        steps = build_steps(samples, self.samples_per_step, self.max_tokens, module.tokenizer.pad_token_id,
                            seed=self.seed + epoch)
        dens, counts, weights = align_steps(
            [s.denominator(module.loss_spec.normalize) for s in steps], [len(s.micro_batches) for s in steps],
            [s.denominator("weighted") for s in steps],
        )
        items = flatten_steps(steps, dens, counts, weights)
        for ep in episodes:  # the micro-batches hold their own copies of the teacher's hidden states
            for t in ep.turns:
                t.teacher_hidden = None
        self.last_episodes, self.last_epoch = episodes, epoch
        module.epoch_stats = episode_stats(episodes) | {"rollout_seconds": t1 - t0} | timings
        if done:
            log.info("resuming epoch %d after its first %d of %d micro-batches", epoch, done, len(items))
        return DataLoader(_EpochItems(items, done), batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> list[DataLoader]:
        rank, size = world()
        loaders = []
        for split in self.val_splits:
            games = shard(balanced(find_games(split, self.data_root), self.val_games), rank, size)
            # A rank with no game still gets one (empty) batch: Lightning rejects empty loaders.
            per_rollout = self.val_batch or max(1, len(games))
            batches = [games[i : i + per_rollout] for i in range(0, len(games), per_rollout)] or [[]]
            loaders.append(DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_identity))
        return loaders


def balanced(games: list[GameInfo], n: int | None) -> list[GameInfo]:
    """The first `n` games taken round-robin over task types (deterministic), so a small evaluation
    still covers every type; None keeps every game."""
    if n is None or n >= len(games):
        return list(games)
    by_type: dict[str, list[GameInfo]] = {}
    for g in games:
        by_type.setdefault(g.task_type, []).append(g)
    out: list[GameInfo] = []
    while len(out) < n:
        for group in by_type.values():
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Per-epoch rollout summary: success, length, gate label rates, mean teacher confidence."""
    turns = [t for ep in episodes for t in ep.turns]
    n_ep, n_turn = max(1, len(episodes)), max(1, len(turns))
    labels = [str(t.gate_label or "").lower() for t in turns]
    conf = [c for t in turns if t.confidence for c in t.confidence]
    stats = {
        "episode_success": sum(ep.success for ep in episodes) / n_ep,
        "episode_length": sum(ep.length for ep in episodes) / n_ep,
        "invalid_format_rate": sum(not t.valid_format for t in turns) / n_turn,
        "gate/skip_rate": labels.count("skip") / n_turn,
        "gate/weak_rate": labels.count("weak") / n_turn,
        "gate/strong_rate": labels.count("strong") / n_turn,
        "gate/intervene_rate": labels.count("intervene") / n_turn,
        "gate_mean": sum(t.gate for t in turns) / n_turn,
        "confidence_mean": sum(conf) / len(conf) if conf else 1.0,
        "turns": float(len(turns)),
    }
    return stats
