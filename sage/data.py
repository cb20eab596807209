"""The DataModule: each epoch's episodes from the source ``data.source`` names (`sage.sources`), planned
(`sage.epoch`), served as `MicroBatch`es and kept for an exact resume (`sage.kept_rollouts`); evaluation games
are played when read. The LightningModule's models come once, through `connect`."""

from __future__ import annotations

import logging
import time
from functools import partial

import lightning as L
from torch.utils.data import DataLoader

from sage import specs
from sage.distill.annotate import Annotator
from sage.envs import EnvPool, GameInfo, PromptBuilder, PromptTemplate, canonical_split, find_games, split_key
from sage.envs.lost import lost
from sage.envs.probe import started_pool
from sage.epoch import Epoch, EpochPlanner, publish
from sage.kept_rollouts import KeptRollouts, check_lost
from sage.loaders import epoch_loader, eval_loader
from sage.plan import MicroBatch
from sage.rollout.player import PartialPlay, Player, stop_at_turn
from sage.rollout.records import Episode
from sage.sources import SourceContext
from sage.sources.registry import make_source

log = logging.getLogger(__name__)


class SageDataModule(L.LightningDataModule):
    """ALFWorld games in, training steps out.

    Args:
        data_root: folder holding ``json_2.1.1`` (else ``$ALFWORLD_DATA``, else the bundled subset).
        train_split: split the training games are drawn from.
        train_games: games sampled (seeded by epoch) from ``train_split`` per epoch (``teacher_pool``: episodes drawn).
        games_per_rollout: games played together in one batched rollout (None = all of this rank's games).
        val_splits: evaluation splits.
        val_games: games per evaluation split (None = every game once; a number: round-robin over the task types).
        val_panel: evaluate on the committed panels (sage/envs/panels: 60 games per split, 10 per task type;
            needs the full splits); with ``val_games`` set, its first N round-robin over the types.
        val_games_per_rollout: evaluation games played in one rollout (None = the rank's whole split as one
            stream; set a number only when the KV cache of a whole split does not fit).
        source: ``on_policy`` (the student plays), ``expert`` (stored walkthroughs, for SFT), ``teacher`` (the
            teacher plays, sampled; SFT on its trajectories) or ``dagger`` (teacher training: expert turns and
            judge examples with offline labels from expert/noise/model play; see ``dagger``); see `sage.sources`.
        teacher_won_only: with ``source=teacher``, keep only the games the teacher won.
        teacher_pool: with ``source=teacher``, draw each epoch's ``train_games`` episodes from a pool the teacher
            played once (`TeacherPoolSpec`, `sage.teacher_pool`) instead of replaying the teacher every epoch.
        rollout: how the student plays (context mode, sampling, lengths).
        prompt: the prompt text.
        max_turns: environment turns per episode (ALFWorld's limit is 50).
        env_workers: environment worker processes.
        samples_per_step: training samples (turns, or episodes in transcript mode) per optimizer step.
        max_tokens_per_micro_batch: padded-token budget of one forward/backward.
        seed: seed of game sampling, sampling and sample shuffling (offset by the epoch).
        dagger: rounds, noise and judge examples of ``source=dagger``.
        track_expert: track alfworld's hand-coded expert in every game (always on with ``source=dagger``).
            Privileged, never shown to a model: each turn gets its offline label, so ``train/judge_agreement`` says
            how often the teacher judge agreed with it. Costs environment time (it reads the game's facts each step).
        max_lost_train_share: the share of a training epoch's episodes that may be lost to the environment (a
            worker killed, a step that raised; left out of training and said on the console) before the run
            stops with exit code 3 (`sage.envs.lost`).
        max_lost_eval_share: the same for each evaluation split; 0 (the default): any lost game stops the run
            after its results are written, marked incomplete.
    """

    def __init__(self, data_root: str | None = None, train_split: str = "train", train_games: int = 16,
                 games_per_rollout: int | None = None, val_splits: list[str] | None = None,
                 val_games: int | None = None, val_panel: bool = False, val_games_per_rollout: int | None = None,
                 source: specs.DataSource = "on_policy", teacher_won_only: bool = True,
                 teacher_pool: specs.TeacherPoolSpec | None = None, rollout: specs.RolloutSpec | None = None,
                 prompt: PromptTemplate | None = None, max_turns: int = 50, env_workers: int = 2,
                 samples_per_step: int = 16, max_tokens_per_micro_batch: int = 8192, seed: int = 0,
                 dagger: specs.DaggerSpec | None = None, track_expert: bool = False,
                 max_lost_train_share: float = 0.25, max_lost_eval_share: float = 0.0) -> None:
        super().__init__()
        self.source = make_source(source, teacher_pool)
        for key, value, low, high, nullable in (  # bad input refused with one line, before any model loads
            ("train_games", train_games, 1, None, False), ("games_per_rollout", games_per_rollout, 1, None, True),
            ("val_games", val_games, 1, None, True), ("val_games_per_rollout", val_games_per_rollout, 1, None, True),
            ("max_turns", max_turns, 1, None, False), ("env_workers", env_workers, 0, None, False),
            ("samples_per_step", samples_per_step, 1, None, False), ("seed", seed, 0, None, False),
            ("max_tokens_per_micro_batch", max_tokens_per_micro_batch, 1, None, False),
            ("max_lost_train_share", max_lost_train_share, 0, 1, False),
            ("max_lost_eval_share", max_lost_eval_share, 0, 1, False),
        ):
            specs.check_range(f"data.{key}", value, low, high, or_null=nullable)
        specs.check_teacher_pool_source(source, teacher_pool)
        self.max_lost_train_share, self.max_lost_eval_share = max_lost_train_share, max_lost_eval_share
        self.data_root, self.train_split, self.train_games = data_root, canonical_split(train_split), train_games
        self.games_per_rollout, self.val_games_per_rollout = games_per_rollout, val_games_per_rollout
        self.val_splits = [canonical_split(s) for s in (val_splits or ["valid_seen", "valid_unseen"])]
        self.val_games, self.val_panel = val_games, val_panel
        self.teacher_won_only, self.teacher_pool = teacher_won_only, teacher_pool
        self.dagger = dagger or specs.DaggerSpec()
        self.rollout_spec, self.prompt = rollout or specs.RolloutSpec(), PromptBuilder(prompt)
        self.max_turns, self.env_workers, self.seed = max_turns, env_workers, seed
        self.samples_per_step, self.max_tokens = samples_per_step, max_tokens_per_micro_batch
        self.track_expert = bool(track_expert) or self.source.tracks_expert
        self.pool = self.player = None  # the environment workers and their Player (`setup`; a pool may be assigned)
        self._own_pool = False
        self.student = self.teacher = self.tokenizer = self.annotator = self.normalize = None  # from `connect`
        self._epoch: Epoch | None = None  # the epoch being trained
        self._kept = KeptRollouts()  # its rollout beside the checkpoints: the resume state
        self._lost, self._lost_stats = (0, 0, None), {}  # the latest rollout's (lost, asked, first error), figure

    def connect(self, student, teacher, tokenizer, annotator: Annotator, normalize: str) -> int:
        """What the data side needs from the LightningModule, given once by it: the policy, the teacher, the
        tokenizer, the annotator (gate + teacher pass) and the loss normalization (which denominator the steps
        carry). Returns the tokens per micro-batch: the module's budget for the evaluation KL."""
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.annotator, self.normalize = annotator, normalize
        return self.max_tokens

    def split_key(self, index: int) -> str:
        return split_key(self.val_splits[index])

    def probe_environment(self, stage: str) -> None:
        """Start the environment pool now, its first worker resetting the stage's first game (`sage.envs.probe`):
        an environment that cannot start stops the run in seconds, before any model loads. The CLI calls it;
        the run then plays with this pool. One assigned from outside is left alone."""
        if self.pool is None:
            (game,) = find_games(self.train_split if stage == "fit" else self.val_splits[0], self.data_root, limit=1)
            self.pool = started_pool(game, self.data_root, self.env_workers, self.max_turns, self.track_expert)
            self._own_pool = True

    def setup(self, stage: str | None = None) -> None:
        """Start the environment workers once; a pool assigned from outside (tests) is used and left open."""
        if self.pool is None:
            self.pool = EnvPool(num_workers=self.env_workers, max_steps=self.max_turns, expert=self.track_expert)
            self._own_pool = True
        if self.player is None or self.player.pool is not self.pool:
            self.player = Player(self.pool, self.prompt, self.rollout_spec, self.games_per_rollout)
        self.player.stop = stop_at_turn

    def teardown(self, stage: str | None = None) -> None:
        if self.pool is not None and self._own_pool:
            self.pool.close()
            self.pool = self.player = None

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch.to(device) if isinstance(batch, MicroBatch) else batch  # evaluation episodes stay

    # -- training data ------------------------------------------------------------------------------
    def _context(self) -> SourceContext:
        return SourceContext(self.player, self.tokenizer, self.student, self.teacher, self.data_root, self.train_split,
                             self.train_games, self.max_turns, self.seed, self.teacher_won_only, self.teacher_pool,
                             self.dagger)

    def collect(self, epoch: int, resume: PartialPlay | None = None) -> list[Episode]:
        """This epoch's episodes from the source, minus those lost to the environment (counted in `_lost`).
        ``resume``: the part of this epoch's rollout played before a SIGTERM."""
        self.setup()
        ctx = self._context()
        episodes = self.source.episodes(ctx, epoch, self.source.games(ctx, epoch), resume)
        gone = lost(episodes)  # counted before the source keeps its share: a lost episode is never won
        self._lost = (len(gone), len(episodes), gone[0].error if gone else None)
        return [ep for ep in episodes if ep.error is None and self.source.kept(ctx, ep)]

    def train_dataloader(self) -> DataLoader:
        index, log_dir = self.trainer.current_epoch, self.trainer.log_dir or self.trainer.default_root_dir
        planner = EpochPlanner(self.annotator, self.normalize, self.rollout_spec.context_mode, self.samples_per_step,
                               self.max_tokens, self.tokenizer.pad_token_id, self.seed)
        # Rollout, judge and teacher scoring under the trainer's precision (autocast), as the steps (Lightning: none)
        with self.trainer.precision_plugin.forward_context():
            t0 = time.perf_counter()
            episodes, done, fresh = self._kept.episodes(index, log_dir, self.collect)
            if fresh:
                n_lost = check_lost(index, self._lost, self.max_lost_train_share, self._kept.file, log_dir)
                self._lost_stats = {"episodes_lost": float(n_lost)}
            self._epoch = planner.plan(episodes, index, rollout_seconds=time.perf_counter() - t0)
        self._epoch.stats.update(self.source.stats | self._lost_stats)
        publish(self.trainer, self._epoch)
        if done:
            log.info("resuming epoch %d after its first %d of %d micro-batches", index, done,
                     len(self._epoch.micro_batches))
        return epoch_loader(self._epoch.micro_batches, done)

    def state_dict(self) -> dict:
        """Every checkpoint names the epoch's kept rollout and its micro-batches trained: a resume is exact."""
        built = self._epoch is not None and self._epoch.index == self._kept.index
        # Lightning 2.6.6 has no public count of the batches trained this epoch: only its fit loop's progress holds it
        return self._kept.state(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if built else 0)

    def load_state_dict(self, state: dict) -> None:
        self._kept.load(state)

    # -- evaluation -----------------------------------------------------------------------------------
    def val_dataloader(self) -> list[DataLoader]:
        self.setup()
        return [eval_loader(split, self.data_root, self.val_panel, self.val_games, self.val_games_per_rollout,
                            partial(self.play_greedy, label=f"eval {split}")) for split in self.val_splits]

    def play_greedy(self, games: list[GameInfo], label: str) -> list[Episode]:
        """Evaluation games played by the connected student under the trainer's precision (as a step would)."""
        with self.trainer.precision_plugin.forward_context():
            return self.player.evaluate(self.student, self.tokenizer, games, label)
