"""Game discovery on the bundled subset: counts, aliases, ordering, sampling, data-root errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sage.envs import (
    SPLIT_ALIASES,
    TASK_TYPES,
    DataRootError,
    GameLoadError,
    UnknownSplitError,
    find_games,
    resolve_data_root,
    walkthrough,
)


def test_counts_per_split_and_type(bundled_games):
    for split, games in bundled_games.items():
        assert Counter(g.task_type for g in games) == dict.fromkeys(TASK_TYPES, 4), split
        assert all(g.split == split for g in games)
    assert sum(len(g) for g in bundled_games.values()) == 72


def test_game_info_fields(bundled_games):
    for g in bundled_games["train"]:
        path = Path(g.path)
        assert path.is_absolute() and path.name == "game.tw-pddl" and path.is_file()
        assert g.game_id == f"{path.parent.parent.name}/{path.parent.name}"
        assert g.game_id.startswith(g.task_type + "-")
        assert (path.parent / "traj_data.json").is_file()


def test_aliases_and_order(bundled_data_root, bundled_games):
    for alias, canonical in SPLIT_ALIASES.items():
        assert find_games(alias, data_root=bundled_data_root) == bundled_games[canonical]
    ids = [g.game_id for g in bundled_games["valid_seen"]]
    assert ids == sorted(ids)


def test_limit_and_sample_are_deterministic(bundled_data_root, bundled_games):
    all_train = bundled_games["train"]
    assert find_games("train", bundled_data_root, limit=5) == all_train[:5]
    a = find_games("train", bundled_data_root, sample=6, seed=3)
    assert a == find_games("train", bundled_data_root, sample=6, seed=3)
    assert len(a) == 6 and set(a) <= set(all_train)
    assert [all_train.index(g) for g in a] == sorted(all_train.index(g) for g in a)
    assert a != find_games("train", bundled_data_root, sample=6, seed=4)
    assert find_games("train", bundled_data_root, sample=6, seed=3, limit=2) == a[:2]
    assert find_games("train", bundled_data_root, sample=1000) == all_train
    with pytest.raises(ValueError, match="-1"):
        find_games("train", bundled_data_root, limit=-1)


def test_root_forms_and_env_var(bundled_data_root, monkeypatch):
    inner = resolve_data_root(bundled_data_root)
    assert inner.name == "json_2.1.1"
    assert resolve_data_root(str(inner)) == inner
    monkeypatch.setenv("ALFWORLD_DATA", bundled_data_root)
    assert resolve_data_root() == inner
    import sage.envs.games as games_module

    monkeypatch.setattr(games_module, "ALFWORLD_DEFAULT", Path(bundled_data_root).parent / "empty-alfworld")
    monkeypatch.setenv("ALFWORLD_DATA", str(games_module.ALFWORLD_DEFAULT))  # what `import alfworld` sets
    assert resolve_data_root() == inner
    monkeypatch.setenv("ALFWORLD_DATA", "/nonexistent/alfw")
    with pytest.raises(DataRootError, match=r"/nonexistent/alfw.*ALFWORLD_DATA"):
        find_games("train")


def test_bad_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="/does/not/exist"):
        find_games("train", data_root="/does/not/exist")
    with pytest.raises(DataRootError, match=f"{tmp_path}.*holds no games"):
        find_games("train", data_root=str(tmp_path))
    (tmp_path / "json_2.1.1" / "valid_seen").mkdir(parents=True)
    with pytest.raises(DataRootError, match=r"train.*has: \['valid_seen'\]"):
        find_games("train", data_root=str(tmp_path))
    with pytest.raises(DataRootError, match="holds no"):
        find_games("seen", data_root=str(tmp_path))
    with pytest.raises(UnknownSplitError, match=r"'valid'.*seen.*train.*unseen"):
        find_games("valid", data_root=str(tmp_path))
    assert issubclass(UnknownSplitError, ValueError)


def test_walkthrough_reads_stored_solution(bundled_games, tmp_path):
    g = bundled_games["valid_unseen"][0]
    assert walkthrough(g) == json.loads(Path(g.path).read_text())["walkthrough"]
    assert all(isinstance(a, str) and a for a in walkthrough(g))
    bad = tmp_path / "game.tw-pddl"
    bad.write_text("{not json")
    with pytest.raises(GameLoadError, match=str(bad)):
        walkthrough(str(bad))


def test_bundled_extraction_race(tmp_path):
    """Two processes extracting into an empty cache at once both get the same complete tree."""
    code = "from sage.envs import *; print(resolve_data_root(), len(find_games('seen')))"
    env = {**os.environ, "SAGE_CACHE": str(tmp_path)}
    env.pop("ALFWORLD_DATA", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and outs[0][1] == "24" and outs[0][0].startswith(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [Path(outs[0][0]).parent.name]  # no temp leftovers
