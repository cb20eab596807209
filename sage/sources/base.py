"""What a data source is: a class whose one method, `episodes`, returns an epoch's episodes, and the
context the DataModule hands it for that (the live models, the player and the settings), so a source
never reaches into the DataModule or the LightningModule.

A source may also choose the epoch's games (`games`: by default ``data.train_games`` sampled with the
epoch's seed, this rank's share) and say which of its played episodes are trained on (`kept`): the
DataModule counts the episodes the environment lost before that choice, over everything played.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sage.distributed import shard, world
from sage.envs import EnvPool, GameInfo, PromptBuilder, find_games
from sage.rollout.player import PartialPlay, Player
from sage.rollout.records import Episode
from sage.specs import DaggerSpec, RolloutSpec, TeacherPoolSpec


@dataclass
class SourceContext:
    """One epoch's collection as the DataModule sees it: the player (environment pool, prompt, rollout spec,
    games per rollout, stop check), the connected models and the data settings a source may need."""

    player: Player | None  # None before the DataModule's setup (choosing games needs no player)
    tokenizer: Any
    student: Any
    teacher: Any  # None without model.teacher
    data_root: str | None
    train_split: str
    train_games: int
    max_turns: int
    seed: int
    teacher_won_only: bool = True
    teacher_pool: TeacherPoolSpec | None = None
    dagger: DaggerSpec = field(default_factory=DaggerSpec)

    @property
    def pool(self) -> EnvPool:
        return self.player.pool

    @property
    def prompt(self) -> PromptBuilder:
        return self.player.prompt

    @property
    def rollout(self) -> RolloutSpec:
        return self.player.spec

    @property
    def games_per_rollout(self) -> int | None:
        return self.player.games_per_rollout

    @property
    def stop(self) -> Callable[[], bool] | None:
        """The preemption check at turn boundaries (SIGTERM, `sage.preemption`)."""
        return self.player.stop

    def play_seed(self, epoch: int) -> int:
        """The sampling seed of epoch ``epoch``'s play."""
        return self.seed + 1000 * epoch


class Source:
    """One value of ``data.source``. Subclasses implement `episodes`; `stats` holds figures of the latest
    epoch's collection, logged with the epoch (e.g. a DAgger round's turn sources)."""

    tracks_expert: ClassVar[bool] = False  # needs alfworld's hand-coded expert tracked in every game

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def games(self, ctx: SourceContext, epoch: int) -> list[GameInfo]:
        """This rank's games of epoch ``epoch``: ``train_games`` sampled with the seed offset by the epoch."""
        games = find_games(ctx.train_split, ctx.data_root, sample=ctx.train_games, seed=ctx.seed + epoch)
        return shard(games, *world())

    def episodes(self, ctx: SourceContext, epoch: int, games: list[GameInfo],
                 resume: PartialPlay | None = None) -> list[Episode]:
        """Epoch ``epoch``'s episodes, the ones the environment lost included (``Episode.error`` set).
        ``resume``: the part of this epoch's play kept from before a SIGTERM (sources that replay a
        seeded collection whole may ignore it)."""
        raise NotImplementedError

    def kept(self, ctx: SourceContext, episode: Episode) -> bool:
        """Whether a played (not lost) episode is trained on."""
        return True
