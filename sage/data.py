"""The on-policy DataModule: every epoch the current student plays fresh ALFWorld games.

What it needs from the LightningModule it receives once, through `connect` (the module calls it when its
models are built): the student (the policy), the teacher (only for ``source=teacher``), the tokenizer,
the annotator and the loss normalization. It never reaches into the module.

`train_dataloader()` (reloaded every epoch) samples this epoch's training games, has the student play
them (`Player`), plans the epoch (`sage.epoch.EpochPlanner`: annotation, samples, optimizer steps),
publishes it to the module and the callbacks (`sage.epoch.publish`) and serves its `MicroBatch`es.
`val_dataloader()` serves each evaluation split's games, played greedily with the connected student
when the loader is read (after a checkpoint is restored).
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from sage import preemption, records_io
from sage.distill.annotate import Annotator
from sage.distributed import all_reduce, shard, world
from sage.envs import (
    EnvPool,
    GameInfo,
    PromptBuilder,
    PromptTemplate,
    canonical_split,
    find_games,
    panel_games,
    split_key,
)
from sage.envs.lost import check_share, lost, lost_line
from sage.epoch import Epoch, EpochPlanner, publish
from sage.plan import MicroBatch
from sage.progress import say
from sage.rollout.loop import RolloutStopped
from sage.rollout.player import PartialPlay, Player, PlayStopped
from sage.rollout.records import Episode
from sage.specs import (
    DATA_SOURCES,
    DaggerSpec,
    DataSource,
    GateSpec,
    RolloutSpec,
    TeacherPoolSpec,
    check_choice,
    check_range,
    check_teacher_pool_source,
)

log = logging.getLogger(__name__)


def _identity(x):
    return x


class _EpochItems(IterableDataset):
    """An epoch's micro-batches, minus the first `done` already trained before a mid-epoch checkpoint.

    Its length stays the whole epoch's: a resumed Lightning loop restores its own batch counter to
    `done` and stops at the epoch's length, so it runs exactly the items that were not trained."""

    def __init__(self, items: list[MicroBatch], done: int = 0) -> None:
        self.items, self.done = items, done

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items[self.done :])


class _EvalGames(Dataset):
    """One evaluation split's games in rollout batches, each played when read: a list of episodes."""

    def __init__(self, batches: list[list[GameInfo]], play) -> None:
        self.batches, self.play = batches, play

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[Episode]:
        return self.play(self.batches[i])


class _ResumableLoader(DataLoader):
    """The epoch loader. Its resume state is the DataModule's (kept rollouts + items done, saved in every
    checkpoint); the empty state here only tells Lightning that a mid-epoch resume is exact."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SageDataModule(L.LightningDataModule):
    """ALFWorld games in, on-policy training steps out.

    Args:
        data_root: folder holding ``json_2.1.1`` (else ``$ALFWORLD_DATA``, else the bundled subset).
        train_split: split the training games are drawn from.
        train_games: games sampled (seeded by epoch) from ``train_split`` for each epoch's rollouts (with
            ``teacher_pool``: episodes drawn from the pool per epoch).
        rollout_batch: games played together in one batched rollout (None = all of this rank's games).
        val_splits: evaluation splits.
        val_games: games per evaluation split (None = every game once; a number takes games round-robin
            over the task types).
        val_panel: evaluate on the committed panels (sage/envs/panels: 60 games per split, 10 per task
            type; needs the full splits); with ``val_games`` set, its first N round-robin over the types.
        val_batch: evaluation games played in one rollout (None = the rank's whole split as one stream;
            set a number only when the KV cache of a whole split does not fit).
        source: ``on_policy`` (the student plays), ``expert`` (stored walkthroughs, for SFT),
            ``teacher`` (the teacher plays, sampled; for SFT on teacher trajectories) or ``dagger`` (teacher
            training: the hand-coded expert, noise and the model play; expert turns and judge examples
            with offline labels are served; see `dagger`).
        teacher_won_only: with ``source=teacher``, keep only the games the teacher won.
        teacher_pool: with ``source=teacher``, draw each epoch's ``train_games`` episodes from a pool the
            teacher played once (`TeacherPoolSpec`, `sage.teacher_pool`) instead of replaying the teacher on
            ``train_games`` new games every epoch.
        rollout: how the student plays (context mode, sampling, lengths).
        prompt: the prompt text.
        max_turns: environment turns per episode (ALFWorld's limit is 50).
        env_workers: environment worker processes.
        samples_per_step: training samples (turns, or episodes in transcript mode) per optimizer step.
        max_tokens_per_micro_batch: padded-token budget of one forward/backward.
        seed: seed of game sampling, sampling and sample shuffling (offset by the epoch).
        dagger: rounds, noise and judge examples of ``source=dagger``.
        track_expert: track alfworld's hand-coded expert in every game (always on with ``source=dagger``).
            Privileged and never shown to a model: it gives each turn its offline label, so the epoch's
            ``train/judge_agreement`` says how often the teacher judge agreed with it. Costs environment
            time (the expert reads the game facts at every step).
        max_lost_train_share: the share of a training epoch's episodes that may be lost to the environment (a
            worker killed, a step that raised; left out of training and said on the console) before the run
            stops with exit code 3 (`sage.envs.lost`).
        max_lost_eval_share: the same for each evaluation split; 0 (the default): any lost game stops the run
            after its results are written, marked incomplete.
    """

    def __init__(
        self,
        data_root: str | None = None,
        train_split: str = "train",
        train_games: int = 16,
        rollout_batch: int | None = None,
        val_splits: list[str] | None = None,
        val_games: int | None = None,
        val_panel: bool = False,
        val_batch: int | None = None,
        source: DataSource = "on_policy",
        teacher_won_only: bool = True,
        teacher_pool: TeacherPoolSpec | None = None,
        rollout: RolloutSpec | None = None,
        prompt: PromptTemplate | None = None,
        max_turns: int = 50,
        env_workers: int = 2,
        samples_per_step: int = 16,
        max_tokens_per_micro_batch: int = 8192,
        seed: int = 0,
        dagger: DaggerSpec | None = None,
        track_expert: bool = False,
        max_lost_train_share: float = 0.25,
        max_lost_eval_share: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("data.source", source, DATA_SOURCES)
        for key, value, low, optional in (
            ("train_games", train_games, 1, False), ("rollout_batch", rollout_batch, 1, True),
            ("val_games", val_games, 1, True), ("val_batch", val_batch, 1, True), ("max_turns", max_turns, 1, False),
            ("env_workers", env_workers, 0, False), ("samples_per_step", samples_per_step, 1, False),
            ("max_tokens_per_micro_batch", max_tokens_per_micro_batch, 1, False), ("seed", seed, 0, False),
        ):
            check_range(f"data.{key}", value, low, or_null=optional)
        check_teacher_pool_source(source, teacher_pool)
        check_range("data.max_lost_train_share", max_lost_train_share, 0.0, 1.0)
        check_range("data.max_lost_eval_share", max_lost_eval_share, 0.0, 1.0)
        self.max_lost_train_share, self.max_lost_eval_share = max_lost_train_share, max_lost_eval_share
        self._lost: tuple[int, int, str | None] = (0, 0, None)  # the latest rollout's lost, asked, first error
        self.data_root = data_root
        self.train_split = canonical_split(train_split)
        self.train_games = train_games
        self.rollout_batch = rollout_batch
        self.val_splits = [canonical_split(s) for s in (val_splits or ["valid_seen", "valid_unseen"])]
        self.val_games = val_games
        self.val_panel = val_panel
        self.val_batch = val_batch
        self.source = source
        self.teacher_won_only = teacher_won_only
        self.teacher_pool = teacher_pool
        self.rollout_spec = rollout or RolloutSpec()
        self.prompt = PromptBuilder(prompt)
        self.max_turns = max_turns
        self.env_workers = env_workers
        self.samples_per_step = samples_per_step
        self.max_tokens = max_tokens_per_micro_batch
        self.seed = seed
        self.dagger = dagger or DaggerSpec()
        self.track_expert = bool(track_expert) or source == "dagger"
        self.pool: EnvPool | None = None
        self.player: Player | None = None
        # what `connect` brings from the LightningModule
        self.student = self.teacher = self.tokenizer = None
        self.annotator: Annotator | None = None
        self.normalize: str | None = None
        self._epoch: Epoch | None = None  # the epoch being trained
        self._own_pool = False
        self._epoch_file: Path | None = None
        self._epoch_index: int | None = None  # the epoch whose rollout `_epoch_file` (or the partial file) holds
        self._partial_file: Path | None = None  # a rollout stopped by SIGTERM, kept for the resume
        self._resume: dict | None = None
        self._round_stats: dict[str, float] = {}  # source=dagger: the latest round's data statistics
        self._teacher_pool = None  # teacher_pool: the pool, loaded (or built) at the first epoch that needs it

    def connect(self, student, teacher, tokenizer, annotator: Annotator, normalize: str) -> int:
        """What the data side needs from the LightningModule, given once by it: the policy to roll out, the
        teacher (``source=teacher``), the tokenizer, the annotator (gate + teacher pass) and the loss
        normalization (which denominator the optimizer steps carry). Returns what the module needs back:
        the tokens per micro-batch (data.max_tokens_per_micro_batch), its budget for the evaluation KL."""
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.annotator, self.normalize = annotator, normalize
        return self.max_tokens

    @property
    def transcript(self) -> bool:
        return self.rollout_spec.context_mode == "transcript"

    def split_key(self, index: int) -> str:
        return split_key(self.val_splits[index])

    def probe_environment(self, stage: str) -> None:
        """Start the environment pool now, its first worker resetting the first game of the stage's first
        split (`sage.envs.probe`): an environment that cannot start stops the run in seconds, before any model
        loads. The CLI calls it; the pool is then the one the run plays with. One assigned from outside is
        left alone."""
        from sage.envs.probe import started_pool

        if self.pool is not None:
            return
        split = self.train_split if stage == "fit" else self.val_splits[0]
        (game,) = find_games(split, self.data_root, limit=1)
        self.pool = started_pool(game, self.data_root, self.env_workers, self.max_turns, self.track_expert)
        self._own_pool = True

    def setup(self, stage: str | None = None) -> None:
        """Start the environment workers once; a pool assigned from outside (tests, notebooks) is
        used as it is and left open."""
        if self.pool is None:
            self.pool = EnvPool(num_workers=self.env_workers, max_steps=self.max_turns, expert=self.track_expert)
            self._own_pool = True
        if self.player is None or self.player.pool is not self.pool:
            self.player = Player(self.pool, self.prompt, self.rollout_spec, self.rollout_batch)
        self.player.stop = self._stop_at_turn

    @staticmethod
    def _stop_at_turn() -> bool:
        """Checked at every turn boundary of a rollout: once turns are being played there is work to
        keep, so SIGTERM from here on stops at a boundary instead of at once (`sage.preemption`)."""
        preemption.work_started()
        return preemption.stop_now()

    def teardown(self, stage: str | None = None) -> None:
        if self.pool is not None and self._own_pool:
            self.pool.close()
            self.pool = None
            self.player = None

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, MicroBatch):
            return batch.to(device)
        return batch  # evaluation episodes: nothing to move

    # -- training data ------------------------------------------------------------------------------
    def epoch_games(self, epoch: int) -> list[GameInfo]:
        if self.source == "dagger":  # disjoint blocks of one seeded permutation: every round plays new games
            games = find_games(self.train_split, self.data_root)
            random.Random(self.seed).shuffle(games)
            sizes = [self.dagger.at(r, self.dagger.games) for r in range(epoch + 1)]
            games = games[sum(sizes[:-1]) % len(games):][: sizes[-1]]
        else:
            games = find_games(self.train_split, self.data_root, sample=self.train_games, seed=self.seed + epoch)
        rank, size = world()
        return shard(games, rank, size)

    def collect(self, epoch: int, resume: PartialPlay | None = None) -> list[Episode]:
        """This epoch's episodes from the configured source; those lost to the environment (a worker died, a
        step raised) are left out and counted (`_lost`: lost, asked, the first error). ``resume``: the part of
        this epoch's rollout played before a SIGTERM."""
        self.setup()
        student, teacher, tokenizer = self.student, self.teacher, self.tokenizer
        games = self.epoch_games(epoch)
        seed = self.seed + 1000 * epoch
        if self.source == "expert":
            from sage.expert import expert_episodes

            episodes = expert_episodes(games, self.prompt, tokenizer, self.rollout_spec, self.pool,
                                       chunk=self.rollout_batch)
        elif self.source == "dagger":
            episodes = self._dagger_round(epoch, games, student, tokenizer, seed)
        elif self.source == "teacher" and self.teacher_pool is not None:
            episodes = self._from_teacher_pool(epoch)
        elif self.source == "teacher":
            if teacher is None:
                raise ValueError("data.source=teacher needs model.teacher")
            episodes = self.player.play(teacher, tokenizer, games, greedy=False, seed=seed, resume=resume)
        else:
            episodes = self.player.play(student, tokenizer, games, greedy=False, seed=seed, resume=resume)
        gone = lost(episodes)  # counted before the won-only filter: a lost episode is never won
        self._lost = (len(gone), len(episodes), gone[0].error if gone else None)
        episodes = [ep for ep in episodes if ep.error is None]
        if self.source == "teacher" and self.teacher_pool is None and self.teacher_won_only:
            episodes = [ep for ep in episodes if ep.won]
        return episodes

    def _from_teacher_pool(self, epoch: int) -> list[Episode]:
        from sage import teacher_pool

        if self._teacher_pool is None:  # the teacher is frozen: one load (and one digest of it) per run
            self._teacher_pool = teacher_pool.load_or_build(
                self.teacher_pool, teacher=self.teacher, tokenizer=self.tokenizer, env_pool=self.pool,
                prompt=self.prompt, rollout=self.rollout_spec, max_turns=self.max_turns, split=self.train_split,
                data_root=self.data_root, won_only=self.teacher_won_only, stop=self._stop_at_turn)
        pool = self._teacher_pool
        self._round_stats = {"teacher_pool_episodes": float(len(pool.episodes)),
                             "teacher_pool_win_rate": pool.win_rate}
        rank, size = world()
        return shard(teacher_pool.draw(pool.episodes, self.train_games, self.seed, epoch), rank, size)

    def _dagger_round(self, epoch, games, model, tokenizer, seed) -> list[Episode]:
        from sage.distill.judge import TeacherJudge
        from sage.teacher import collect_round
        from sage.teacher.policy import Mix

        d = self.dagger
        mix = Mix(model=d.at(epoch, d.model_share), random=d.random, invalid=d.invalid, repeat=d.repeat,
                  malformed=d.at(epoch, d.malformed))
        judge = TeacherJudge(GateSpec(labels=d.judge_labels, judge_history=d.judge_history), model, tokenizer)
        try:
            episodes, self._round_stats = collect_round(
                games=games, pool=self.pool, prompt=self.prompt, tokenizer=tokenizer, rollout_spec=self.rollout_spec,
                mix=mix, answer=self.prompt.template.expert_answer, judge=judge,
                judge_examples=d.at(epoch, d.judge_examples), model=model, seed=seed, batch=self.rollout_batch,
                label=f"teacher data round {epoch}", stop=self._stop_at_turn, judge_weight=d.at(epoch, d.judge_weight))
        except RolloutStopped:  # the round is seeded: a resumed run replays it whole, the same
            raise preemption.Preempted(f"in teacher data round {epoch} (replayed from its start on resume)") from None
        return episodes

    def train_dataloader(self) -> DataLoader:
        index = self.trainer.current_epoch
        planner = EpochPlanner(self.annotator, self.normalize, self.transcript, self.samples_per_step,
                               self.max_tokens, self.tokenizer.pad_token_id, self.seed)
        # Rollout, judge and teacher scoring run under the trainer's precision (bf16-mixed: autocast),
        # as the training steps do; outside the steps Lightning applies none.
        with self.trainer.precision_plugin.forward_context():
            t0 = time.perf_counter()
            episodes, done = self._episodes_for(index)
            self._epoch = planner.plan(episodes, index, rollout_seconds=time.perf_counter() - t0)
        self._epoch.stats.update(self._round_stats)
        publish(self.trainer, self._epoch)
        items = self._epoch.micro_batches
        if done:
            log.info("resuming epoch %d after its first %d of %d micro-batches", index, done, len(items))
        return _ResumableLoader(_EpochItems(items, done), batch_size=None, collate_fn=_identity)

    # -- exact mid-epoch resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in every checkpoint: where this epoch's rollouts are kept and how many of its items
        (micro-batches) were trained, so a resumed run continues the same epoch with the same samples."""
        if self._partial_file is not None:  # stopped by SIGTERM inside the rollout
            return {"epoch": self._epoch_index, "partial_file": str(self._partial_file), "items_done": 0}
        if self._epoch_file is None:
            return {}
        built = self._epoch is not None and self._epoch.index == self._epoch_index
        # Lightning 2.6.6 has no public count of the batches trained in the current epoch: its fit loop's
        # progress tracker is the one place that holds it (and restores it on resume).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if built else 0
        return {"epoch": self._epoch_index, "episodes_file": str(self._epoch_file), "items_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) or None

    def _epoch_path(self, epoch: int, kind: str = "") -> Path | None:
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        if log_dir is None:
            return None
        rank, size = world()
        return Path(log_dir) / "epoch_data" / f"epoch_{epoch:03d}{kind}{f'_rank{rank}' if size > 1 else ''}.jsonl"

    def _episodes_for(self, epoch: int) -> tuple[list[Episode], int]:
        """This epoch's rollouts and the items already trained: kept ones when resuming this epoch,
        fresh ones (saved beside the checkpoints, atomically) otherwise."""
        resume, self._resume = self._resume, None
        kept = {k: records_io.converted(resume[k]) for k in ("episodes_file", "partial_file") if k in (resume or {})}
        if resume and resume.get("epoch") == epoch and kept.get("episodes_file", Path("")).is_file():
            self._epoch_file, self._epoch_index = kept["episodes_file"], epoch
            return records_io.read_episodes(self._epoch_file, "epoch")[1], int(resume["items_done"])
        partial = None
        if resume and resume.get("epoch") == epoch and kept.get("partial_file", Path("")).is_file():
            partial = records_io.read_partial(kept["partial_file"], "partial_play")[1]
            log.info("resuming the rollout of epoch %d after its first %d turns", epoch, partial.turns)
        self._partial_file, self._epoch_file, self._epoch_index = None, None, epoch
        try:
            episodes = self.collect(epoch) if partial is None else self.collect(epoch, partial)
        except PlayStopped as stopped:
            self._partial_file = self._epoch_path(epoch, "_partial")
            if self._partial_file is not None:
                records_io.write_partial(self._partial_file, "partial_play", stopped.partial)
            raise preemption.Preempted(
                f"in the rollout of epoch {epoch} after {stopped.partial.turns} turns (kept in {self._partial_file})"
            ) from None
        self._epoch_file = self._epoch_path(epoch)
        if self._epoch_file is not None:
            records_io.write_episodes(self._epoch_file, "epoch", episodes)
        if partial is not None:  # the whole rollout is kept now
            kept["partial_file"].unlink(missing_ok=True)
        self._check_lost(epoch)
        return episodes, 0

    def _check_lost(self, epoch: int) -> None:
        """Say how many of the epoch's episodes the environment lost (summed over ranks: one decision) and
        stop past ``max_lost_train_share`` (`sage.envs.lost`), the played ones kept in the epoch file."""
        n_lost, asked, first = self._lost
        totals = all_reduce(torch.tensor([float(n_lost), float(asked)], dtype=torch.float64), "sum")
        n_lost, asked = int(totals[0]), int(totals[1])
        self._round_stats["episodes_lost"] = float(n_lost)
        if not n_lost:
            return
        say(lost_line(f"rollout epoch {epoch}", n_lost, asked, first))
        ckpt = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        wrote = f"the {asked - n_lost} played episodes are in {self._epoch_file}" + (
            f"; the last checkpoint, {ckpt}, resumes from the epoch's start" if ckpt.is_file() else "")
        check_share(f"the rollout of epoch {epoch}", n_lost, asked, self.max_lost_train_share,
                    "data.max_lost_train_share", wrote)

    # -- evaluation -----------------------------------------------------------------------------------
    def val_dataloader(self) -> list[DataLoader]:
        self.setup()
        rank, size = world()
        loaders = []
        for split in self.val_splits:
            pool = panel_games(split, self.data_root) if self.val_panel else find_games(split, self.data_root)
            games = shard(balanced(pool, self.val_games), rank, size)
            # A rank with no game still gets one (empty) batch: Lightning rejects empty loaders.
            per_rollout = self.val_batch or max(1, len(games))
            batches = [games[i : i + per_rollout] for i in range(0, len(games), per_rollout)] or [[]]
            play = partial(self.play_greedy, label=f"eval {split}")
            loaders.append(DataLoader(_EvalGames(batches, play), batch_size=None, shuffle=False, collate_fn=_identity))
        return loaders

    def play_greedy(self, games: list[GameInfo], label: str) -> list[Episode]:
        """Evaluation games played greedily by the connected student, under the trainer's precision (as a
        validation step would run)."""
        if not games:
            return []
        with self.trainer.precision_plugin.forward_context():
            episodes = self.player.play(self.student, self.tokenizer, games, greedy=True, label=label)
        gone = lost(episodes)  # counted and judged by the evaluation callback, at the split's end
        if gone:
            say(lost_line(label, len(gone), len(episodes), gone[0].error))
        return episodes


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
