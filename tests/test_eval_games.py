"""`python -m sage.study.eval_games`: figures re-computed from per-game records, on a subset of the games."""

from __future__ import annotations

import json

import pytest

from sage.study.eval_games import main


def record(split: str, game: str, won: bool, admissible: list[int]) -> dict:
    n = len(admissible)
    return {"split": split, "game_id": game, "task_type": "pick_and_place_simple", "won": won, "turns": n,
            "admissible": admissible, "parsed": [1] * n, "repeat": [0] * n, "kl": [0.5] * n, "kl_tokens": [2] * n}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_same_games_counts_only_the_other_evaluations_games(tmp_path, capsys):
    whole = write(tmp_path / "whole.jsonl", [record("seen", "a", True, [1, 1]), record("seen", "b", False, [0, 0]),
                                             record("unseen", "a", False, [1, 0])])  # same id, other split
    half = write(tmp_path / "half.jsonl", [record("seen", "a", False, [0]), record("unseen", "c", False, [0])])
    main([whole, "--same-games", half, "--out", str(tmp_path / "f.json")])
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["games"] == {"seen": {**{k: 0 for k in figures["games"]["seen"]}, "pick_and_place_simple": 1,
                                         "overall": 1}}
    assert figures["success"]["seen"]["overall"] == 1.0 and figures["turn_rates"]["seen"]["admissible_rate"] == 1.0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # nothing in common: said, not an empty table
        main([whole, "--same-games", write(tmp_path / "none.jsonl", [record("seen", "z", False, [0])])])
    assert "none of its games" in capsys.readouterr().err
