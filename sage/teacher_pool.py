"""A fixed set of the frozen teacher's episodes, played once and shared by every run that names its file.

SFT on the teacher's trajectories (``data.source: teacher``) replays the teacher every epoch by default:
at CPU scale that costs more than the student's whole training (a 30-layer teacher plays ~4 games for each
one kept). The teacher is frozen, so its play depends only on the games, its sampling seed and the
settings that shape its prompts; `TeacherPoolSpec` fixes those once, the first run plays them (resumable:
a stopped build keeps the games finished and continues the one in progress) and later runs load the file.
Each epoch then draws its episodes from the pool (`draw`): a permutation seeded by the run's data seed,
without repeats until the pool is used up.

The file records what made it (`describe`); a run whose teacher, games, turn limit, prompt, sampling or
tokenizer differ is refused with the first field that differs, never silently served another pool.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sage import preemption, records_io
from sage.envs import find_games
from sage.rollout.player import Player, PlayStopped
from sage.rollout.records import Episode
from sage.specs import TeacherPoolSpec

log = logging.getLogger(__name__)


@dataclass
class TeacherPool:
    """What the file holds: how it was made, one row per game played, and the episodes kept."""

    meta: dict
    games: list[dict]  # game_id, task_type, won, turns, error
    episodes: list[Episode]  # the kept ones (won only, with ``won_only``); never an errored one
    seconds: float  # wall time of the build

    @property
    def win_rate(self) -> float:
        played = [g for g in self.games if g["error"] is None]
        return sum(g["won"] for g in played) / max(1, len(played))


def model_sha256(model: torch.nn.Module) -> str:
    """Digest of every parameter and buffer (names and bytes): the teacher's identity, whatever its path."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def describe(spec: TeacherPoolSpec, *, teacher, tokenizer, prompt, rollout, max_turns: int, split: str,
             games: list, won_only: bool) -> dict:
    """Everything the pool's token ids and outcomes depend on (compared field by field on load), as JSON
    reads it back (tuples as lists)."""
    return _plain({
        "teacher_sha256": model_sha256(teacher),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "split": split,
        "games": [g.game_id for g in games],
        "seed": spec.seed,
        "games_per_rollout": spec.games_per_rollout,
        "max_turns": max_turns,
        "won_only": won_only,
        # engine hf is left out, so pools built before data.rollout.engine existed still match
        "rollout": {k: v for k, v in dataclasses.asdict(rollout).items() if k != "engine" or v != "hf"},
        "prompt": dataclasses.asdict(prompt.template),
    })


def _plain(value):
    return json.loads(json.dumps(value))


# Header fields renamed since pools were first written: their old name, read as the new one.
_OLD_META = {"batch": "games_per_rollout"}


def _check_same(path: Path, have: dict, want: dict) -> None:
    have = {_OLD_META.get(key, key): value for key, value in have.items()}
    for key in want:
        if have.get(key) != want[key]:
            shown = (f"{len(have.get(key) or [])} vs {len(want[key])} games, or others" if key == "games"
                     else f"file: {have.get(key)!r}, this run: {want[key]!r}")
            raise ValueError(
                f"data.teacher_pool.file={str(path)!r} was built with another {key} ({shown}); "
                "name a new file for this run's settings, or delete that one to rebuild it")


@contextmanager
def _locked(path: Path):
    """One builder at a time: a second run naming the same file waits, then loads what the first built
    (the lock dies with its process, so a killed builder never blocks the next)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("teacher pool %s: another run is building it; waiting", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_or_build(spec: TeacherPoolSpec, *, teacher, tokenizer, env_pool, prompt, rollout, max_turns: int,
                  split: str, data_root: str | None, won_only: bool, stop=None) -> TeacherPool:
    """The pool at ``spec.file``: loaded when it exists (and matches this run), else played now by the
    teacher (sampled) and written atomically. ``stop``: the preemption check at turn boundaries; a stopped
    build keeps its progress in ``<file>.partial`` and raises `preemption.Preempted`."""
    path = Path(spec.file)
    games = find_games(split, data_root, sample=spec.games, seed=spec.seed)
    want = describe(spec, teacher=teacher, tokenizer=tokenizer, prompt=prompt, rollout=rollout, max_turns=max_turns,
                    split=split, games=games, won_only=won_only)
    with _locked(path):
        if path.is_file():
            head, episodes = _read(path, "teacher_pool")
            _check_same(path, head["meta"], want)
            pool = TeacherPool(head["meta"], head["games"], episodes, head["seconds"])
            log.info("teacher pool %s: %d episodes kept of %d games (teacher won %.1f %%)", path,
                     len(pool.episodes), len(pool.games), 100 * pool.win_rate)
            return pool
        partial_file = path.with_name(path.name + ".partial")
        resume, spent = None, 0.0
        if partial_file.is_file():
            head, resume = _read(partial_file, "teacher_pool_partial")
            _check_same(partial_file, head["meta"], want)
            spent = head["seconds"]
            log.info("teacher pool %s: resuming its build after %d finished games", path, len(resume.finished))
        player = Player(env_pool, prompt, rollout, spec.games_per_rollout)
        player.stop = stop
        t0 = time.perf_counter()
        try:
            episodes = player.play(teacher, tokenizer, games, greedy=False, seed=spec.seed, resume=resume,
                                   label="teacher pool")
        except PlayStopped as stopped:
            records_io.write_partial(partial_file, "teacher_pool_partial", stopped.partial, meta=want,
                                     seconds=spent + time.perf_counter() - t0)
            raise preemption.Preempted(
                f"while building the teacher pool {path} (its progress is kept in {partial_file})") from None
        rows = [{"game_id": ep.game_id, "task_type": ep.task_type, "won": ep.won, "turns": ep.length,
                 "error": ep.error} for ep in episodes]
        kept = [ep for ep in episodes if ep.error is None and (ep.won or not won_only)]
        pool = TeacherPool(meta=want, games=rows, episodes=kept, seconds=spent + time.perf_counter() - t0)
        records_io.write_episodes(path, "teacher_pool", kept, meta=pool.meta, games=rows, seconds=pool.seconds)
        partial_file.unlink(missing_ok=True)
        log.info("teacher pool %s: built in %.0f s; %d episodes kept of %d games (teacher won %.1f %%)", path,
                 pool.seconds, len(kept), len(rows), 100 * pool.win_rate)
        return pool


def _read(path: Path, kind: str):
    """A pool file's header and content; an old pickle is refused with the conversion command."""
    try:
        if kind == "teacher_pool":
            return records_io.read_episodes(path, kind)
        return records_io.read_partial(path, kind)
    except records_io.RecordsFileError as exc:
        then = ", then name that file in data.teacher_pool.file" if isinstance(exc, records_io.LegacyFileError) else ""
        raise type(exc)(f"data.teacher_pool.file: {exc}{then}") from None


def draw(episodes: list[Episode], n: int, seed: int, epoch: int) -> list[Episode]:
    """Epoch ``epoch``'s ``n`` episodes: consecutive slices of one permutation seeded by ``seed``, so a run
    sees every pooled episode once before any repeats (copies: training annotates its episodes)."""
    if not episodes:
        raise ValueError("the teacher pool holds no episode to train on (the teacher won none of its games?): "
                         "raise data.teacher_pool.games, or set data.teacher_won_only=false")
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    start = epoch * n
    if start + n > len(order):
        log.warning("teacher pool: epoch %d draws episodes %d-%d of %d: some repeat", epoch, start, start + n - 1,
                    len(order))
    return [copy.deepcopy(episodes[order[(start + i) % len(order)]]) for i in range(n)]
