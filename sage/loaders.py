"""The DataModule's datasets: an epoch's micro-batches (resumable mid-epoch) and each evaluation split's
games, played when read; `balanced` picks a small evaluation that still covers every task type."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import DataLoader, Dataset, IterableDataset

from sage.distributed import shard, world
from sage.envs import GameInfo, find_games, panel_games
from sage.plan import MicroBatch
from sage.rollout.records import Episode


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


class _ResumableLoader(DataLoader):
    """The epoch loader. Its resume state is the DataModule's (kept rollouts + items done, saved in every
    checkpoint); the empty state here only tells Lightning that a mid-epoch resume is exact."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def epoch_loader(items: list[MicroBatch], done: int = 0) -> DataLoader:
    """The epoch's micro-batches, one per step of the loop, the first ``done`` skipped (trained already)."""
    return _ResumableLoader(_EpochItems(items, done), batch_size=None, collate_fn=_identity)


class EvalGames(Dataset):
    """One evaluation split's games in rollout groups, each played when read: a list of episodes."""

    def __init__(self, groups: list[list[GameInfo]], play: Callable[[list[GameInfo]], list[Episode]]) -> None:
        self.groups, self.play = groups, play

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[Episode]:
        return self.play(self.groups[i])


def eval_loader(split: str, data_root: str | None, panel: bool, n_games: int | None,
                games_per_rollout: int | None, play: Callable[[list[GameInfo]], list[Episode]]) -> DataLoader:
    """This rank's share of a split's evaluation games (the committed panel with ``panel``; ``n_games``
    balanced over task types), ``games_per_rollout`` per item (None: the whole share in one rollout)."""
    pool = panel_games(split, data_root) if panel else find_games(split, data_root)
    games = shard(balanced(pool, n_games), *world())
    # A rank with no game still gets one (empty) group: Lightning rejects empty loaders.
    size = games_per_rollout or max(1, len(games))
    groups = [games[i : i + size] for i in range(0, len(games), size)] or [[]]
    return DataLoader(EvalGames(groups, play), batch_size=None, shuffle=False, collate_fn=_identity)


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
