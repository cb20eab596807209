"""Paired differences on the same games (`sage.study.paired`): the estimate is the table's ratio difference on the
common games, pooled over seeds; the interval brackets it, is 0 wide for identical cells, and re-renders
to the same bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sage.study.paired import paired_difference, paired_rows, write_paired


def record(split: str, game: str, won: bool, admissible: list[int], kl: float | None = None) -> dict:
    return {"split": split, "game_id": game, "task_type": "pick_and_place_simple", "won": won,
            "turns": len(admissible), "admissible": admissible, "parsed": [1] * len(admissible),
            "repeat": [0] * len(admissible), "kl": None if kl is None else [kl] * len(admissible),
            "kl_tokens": [2] * len(admissible)}


def write_seed(root, cell: str, seed: int, records: list[dict]) -> None:
    d = root / "runs" / cell / f"seed_{seed}"
    d.mkdir(parents=True)
    (d / "eval_results.json").write_text("{}")
    (d / "eval_games.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_estimate_is_the_ratio_difference_on_common_games_pooled_over_seeds(tmp_path):
    base = [record("seen", "a", False, [1, 0], 0.5), record("seen", "b", False, [0, 0, 0, 0], 0.5),
            record("unseen", "u", False, [0], 1.0)]
    write_seed(tmp_path, "opd", 0, base)
    write_seed(tmp_path, "sage", 0, [record("seen", "a", True, [1, 1], 0.25), record("seen", "b", False, [1, 0, 0, 0], 0.25),
                                     record("seen", "extra", True, [1], 0.0)])  # not in opd's games: left out
    write_seed(tmp_path, "sage", 1, [record("seen", "a", False, [0, 0], 0.25), record("seen", "b", False, [1, 1, 0, 0], 0.25)])
    write_seed(tmp_path, "same", 0, base)
    (tmp_path / "runs/unfinished/seed_0").mkdir(parents=True)
    rows = {r["cell"]: r for r in paired_rows(tmp_path, ["opd", "sage", "same", "unfinished"], "opd")}
    assert set(rows) == {"sage", "same"}
    s = rows["sage"]
    assert s["seeds"] == 2 and s["baseline_seeds"] == 1 and s["seen/games"] == 2 and s["unseen/games"] == 0
    # sage pooled: wins 1 of 4 games, admissible 5 of 12 turns; opd: 0 of 2, 1 of 6
    assert s["seen/success"][0] == pytest.approx(0.25) and s["seen/admissible"][0] == pytest.approx(5 / 12 - 1 / 6)
    assert s["seen/reverse_kl"][0] == pytest.approx(0.25 / 2 - 0.5 / 2)  # per-turn KL sums over 2 tokens each
    for fig in ("success", "admissible", "reverse_kl"):
        est, low, high = s[f"seen/{fig}"]
        assert low <= est <= high
    assert rows["same"]["seen/admissible"] == (0.0, 0.0, 0.0) and rows["same"]["unseen/games"] == 1


def test_the_new_turn_kl_leaves_out_the_turns_that_repeat_the_previous_action(tmp_path):
    looping = {**record("seen", "a", False, [1, 0, 0, 0]), "repeat": [0, 1, 1, 0],
               "kl": [0.5, 0.0, 0.25, 1.0], "kl_tokens": [2, 4, 4, 3]}
    write_seed(tmp_path, "opd", 0, [record("seen", "a", False, [1, 0, 0, 0], 0.5)])  # 0.5 per turn, 2 tokens each
    write_seed(tmp_path, "sage", 0, [looping])
    (row,) = paired_rows(tmp_path, ["opd", "sage"], "opd")
    assert row["seen/reverse_kl"][0] == pytest.approx(1.75 / 13 - 2.0 / 8)
    assert row["seen/reverse_kl_new_turns"][0] == pytest.approx(1.5 / 5 - 2.0 / 8)


def test_the_interval_covers_the_resampled_spread():
    """Games whose difference is always +1 give [1, 1]; a two-valued difference gives an interval strictly
    inside its extremes, and the same seed gives the same interval."""
    ones = np.array([[1.0, 1.0]] * 10)
    zeros = np.array([[0.0, 1.0]] * 10)
    assert paired_difference(ones, zeros) == (1.0, 1.0, 1.0)
    mixed = np.array([[1.0, 1.0]] * 5 + [[0.0, 1.0]] * 5)
    est, low, high = paired_difference(mixed, zeros)
    assert est == 0.5 and 0.1 < low < 0.5 < high < 0.9
    assert paired_difference(mixed, zeros) == (est, low, high)


def test_paired_md_re_renders_to_the_same_bytes(tmp_path):
    write_seed(tmp_path, "opd", 0, [record("seen", g, False, [1, 0, 0], 0.5) for g in "abcd"])
    write_seed(tmp_path, "sage", 0, [record("seen", g, g == "a", [1, 1, 0], 0.25) for g in "abcd"])
    path = write_paired(tmp_path, ["opd", "sage"], {"opd": "OPD", "sage": "SAGE-OPD"}, "opd")
    first = path.read_bytes()
    assert write_paired(tmp_path, ["opd", "sage"], {"opd": "OPD", "sage": "SAGE-OPD"}, "opd").read_bytes() == first
    text = first.decode()
    assert "## Each cell minus OPD" in text and "| SAGE-OPD | 1 (1) | 4 |" in text
    assert write_paired(tmp_path, ["opd"], {}, "opd") is None  # nothing to pair


def test_contrasts_pair_a_cell_with_each_other_cell_in_their_own_section(tmp_path):
    """`contrasts` {sage: [no_gate, no_norm]}: sage minus each, after the baseline rows; a contrast whose
    other cell has no finished seed is left out; the estimate is the same function's as against the baseline."""
    write_seed(tmp_path, "opd", 0, [record("seen", g, False, [1, 0, 0], 0.5) for g in "abcd"])
    write_seed(tmp_path, "sage", 0, [record("seen", g, g == "a", [1, 1, 0], 0.25) for g in "abcd"])
    write_seed(tmp_path, "no_gate", 0, [record("seen", g, False, [1, 1, 1], 0.75) for g in "abcd"])
    contrasts = {"sage": ["no_gate", "no_norm"]}
    rows = paired_rows(tmp_path, ["opd", "sage", "no_gate", "no_norm"], "opd", contrasts)
    assert [(r["cell"], r["vs"], r["contrast"]) for r in rows] == [
        ("sage", "opd", False), ("no_gate", "opd", False), ("sage", "no_gate", True)]
    gate = rows[2]
    assert gate["seen/admissible"][0] == pytest.approx(2 / 3 - 1) and gate["seen/success"][0] == pytest.approx(0.25)
    assert gate["seen/reverse_kl"][0] == pytest.approx(0.25 / 2 - 0.75 / 2)
    labels = {"opd": "OPD", "sage": "SAGE-OPD", "no_gate": "no gate"}
    text = write_paired(tmp_path, ["opd", "sage", "no_gate"], labels, "opd", contrasts).read_text()
    head, _, tail = text.partition("## SAGE-OPD minus each of these")
    assert "| no gate | 1 (1) | 4 |" in head and "| SAGE-OPD | 1 (1) | 4 |" in head  # vs OPD
    assert "| no gate | 1 (1) | 4 | +25.0 [" in tail and "no_norm" not in tail  # SAGE-OPD minus no gate
