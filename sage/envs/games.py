"""ALFWorld game discovery: data root, splits, task types and the bundled subset.

Discovery only lists paths (no game is parsed), so finding the 3553 train games stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sage.errors import InputError
from sage.io import atomic_folder

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLIT_ALIASES = {
    "train": "train",
    "valid_seen": "valid_seen",
    "seen": "valid_seen",
    "valid_unseen": "valid_unseen",
    "unseen": "valid_unseen",
}
SPLITS = ("train", "valid_seen", "valid_unseen")
GAME_FILE = "game.tw-pddl"
BUNDLED_ARCHIVE = Path(__file__).parent / "data" / "alfworld_subset.tar.xz"
ALFWORLD_DEFAULT = Path("~/.cache/alfworld").expanduser()  # what `import alfworld` puts in $ALFWORLD_DATA


class DataRootError(InputError, FileNotFoundError):
    """The data root (or a split folder under it) does not exist or holds no ALFWorld games."""


class UnknownSplitError(InputError, ValueError):
    """A split name that is neither a split nor an alias."""


class GameLoadError(InputError, ValueError):
    """A game file that cannot be read or started by the engine; the message names the file."""


class WorkerStartError(InputError, RuntimeError):
    """An environment worker could not start the engine (alfworld failed at import); the worker's exception."""


def drop_empty_alfworld_data() -> None:
    """An exported but empty $ALFWORLD_DATA (a shell script exporting an unset name) means unset: alfworld
    would try to create the folder '' at import and fail. Called before every alfworld import."""
    if "ALFWORLD_DATA" in os.environ and not os.environ["ALFWORLD_DATA"].strip():
        del os.environ["ALFWORLD_DATA"]


@dataclass(frozen=True)
class GameInfo:
    """One ALFWorld trial; frozen and picklable so it can be sent to pool workers."""

    path: str  # absolute path to .../<task-dir>/<trial-dir>/game.tw-pddl
    split: str  # canonical split name
    task_type: str  # one of TASK_TYPES, from the task directory prefix
    game_id: str  # "<task-dir>/<trial-dir>"


def canonical_split(split: str) -> str:
    """Map a split name or alias to its canonical name."""
    try:
        return SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(SPLIT_ALIASES))
        raise UnknownSplitError(f"unknown ALFWorld split {split!r}; allowed: {allowed}") from None


def split_key(split: str) -> str:
    """The short name a split's metrics are logged under: train, seen or unseen."""
    return canonical_split(split).removeprefix("valid_")


def task_type_of(task_dir: str) -> str | None:
    """Task type from a task directory name such as 'pick_two_obj_and_place-Book-None-Desk-309'."""
    prefix = task_dir.split("-", 1)[0]
    return prefix if prefix in TASK_TYPES else None


def cache_dir() -> Path:
    """$SAGE_CACHE, else $XDG_CACHE_HOME/sage-opd, else ~/.cache/sage-opd."""
    if os.environ.get("SAGE_CACHE"):
        return Path(os.environ["SAGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sage-opd"


@lru_cache(maxsize=4)
def _archive_digest(archive: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def bundled_root(archive: Path = BUNDLED_ARCHIVE) -> Path:
    """Extract the bundled subset once per archive content and return the folder holding json_2.1.1.

    Extraction goes to a private temporary folder next to the target, then one atomic rename publishes
    it, so racing processes never see a half-written tree (the loser drops its copy).
    """
    st = archive.stat()
    target = cache_dir() / f"alfworld-subset-{_archive_digest(archive, st.st_mtime_ns, st.st_size)[:16]}"
    if (target / "json_2.1.1").is_dir():
        return target
    # a racing process that published first wins; ours is dropped
    with atomic_folder(target, replace=False) as tmp, tarfile.open(archive, "r:xz") as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(tmp, filter="data")
        else:  # Python < 3.10.12 has no extraction filters; the archive is our own.
            tf.extractall(tmp)
    return target


def _split_parent(root: Path) -> Path | None:
    for candidate in (root / "json_2.1.1", root):
        if any((candidate / split).is_dir() for split in SPLITS):
            return candidate.resolve()
    return None


def resolve_data_root(data_root: str | None = None) -> Path:
    """The folder holding the split folders (json_2.1.1): the argument, else $ALFWORLD_DATA, else bundled.

    The given root may be the folder that contains json_2.1.1 (as ALFWORLD_DATA usually is) or
    json_2.1.1 itself. Importing alfworld sets $ALFWORLD_DATA to ~/.cache/alfworld (creating it) when
    unset, so that exact default counts as unset unless games were downloaded there.
    """
    source = "data_root"
    if data_root is None:
        data_root, source = os.environ.get("ALFWORLD_DATA") or None, "$ALFWORLD_DATA"
        if (
            data_root
            and Path(data_root).expanduser() == ALFWORLD_DEFAULT
            and not _split_parent(ALFWORLD_DEFAULT)
        ):
            data_root = None
    if data_root is None:
        return _split_parent(bundled_root())
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataRootError(
            f"ALFWorld data root {str(root)!r} (from {source}) does not exist: give a folder holding "
            f"json_2.1.1/<split>/ (what `alfworld-download` fetches), or leave data_root and $ALFWORLD_DATA "
            f"unset to use the bundled subset"
        )
    found = _split_parent(root)
    if found is None:
        raise DataRootError(
            f"ALFWorld data root {str(root)!r} (from {source}) holds no games: expected json_2.1.1/<split>/ "
            f"or <split>/ with split in {', '.join(SPLITS)}"
        )
    return found


def find_games(
    split: str,
    data_root: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[GameInfo]:
    """Games of a split, sorted by game_id; `sample` draws N with `seed`, then `limit` keeps the first N.

    Task directories whose prefix is not one of TASK_TYPES are skipped.
    """
    canonical = canonical_split(split)
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    root = resolve_data_root(data_root)
    split_dir = root / canonical
    if not split_dir.is_dir():
        present = sorted(s for s in SPLITS if (root / s).is_dir())
        raise DataRootError(f"split folder {str(split_dir)!r} does not exist; this root has: {present}")
    games = []
    for path in sorted(split_dir.glob(f"*/*/{GAME_FILE}")):
        task_dir, trial_dir = path.parent.parent.name, path.parent.name
        task_type = task_type_of(task_dir)
        if task_type is not None:
            games.append(GameInfo(str(path), canonical, task_type, f"{task_dir}/{trial_dir}"))
    if not games:
        raise DataRootError(f"split folder {str(split_dir)!r} holds no <task>/<trial>/{GAME_FILE} games")
    if sample is not None and sample < len(games):
        picked = set(random.Random(seed).sample(range(len(games)), sample))
        games = [g for i, g in enumerate(games) if i in picked]
    return games if limit is None else games[:limit]


PANELS = Path(__file__).parent / "panels"


def panel_games(split: str, data_root: str | None = None) -> list[GameInfo]:
    """The committed evaluation panel of a validation split (sage/envs/panels/<split>.txt: 10 games per task
    type), found under the data root; every CPU evaluation of the project plays these games."""
    canonical = canonical_split(split)
    file = PANELS / f"{canonical}.txt"
    if not file.is_file():
        have = ", ".join(sorted(p.stem for p in PANELS.glob("*.txt")))
        raise UnknownSplitError(f"no evaluation panel for split {canonical!r}; panels exist for: {have}")
    wanted = [line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    found = {g.game_id: g for g in find_games(canonical, data_root)}
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DataRootError(
            f"{len(missing)} of the {len(wanted)} {canonical} panel games are not under this data root (first: "
            f"{missing[0]!r}); the panels need the full ALFWorld splits (bash scripts/alfworld_data.sh, then "
            "ALFWORLD_DATA or data.data_root), or set data.val_panel false"
        )
    return [found[w] for w in wanted]


def walkthrough(game: GameInfo | str) -> list[str]:
    """The stored solution of a game (the `walkthrough` field of game.tw-pddl); it wins the game."""
    path = game.path if isinstance(game, GameInfo) else str(game)
    try:
        with open(path) as f:
            data = json.load(f)
        return list(data["walkthrough"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GameLoadError(f"cannot read the walkthrough of game file {path!r}: {exc!r}") from exc
