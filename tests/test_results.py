"""Aggregation against hand-made run folders: mean, sample std, relative change, tables, per-epoch CSV, plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from sage.envs import TASK_TYPES
from sage.study.results import (
    aggregate,
    load_eval_results,
    mean_std,
    read_epoch_metrics,
    relative_change,
    to_markdown,
    write_results,
)


def payload(seen: float, unseen: float, pick: float | None = None, admissible: float | None = None) -> dict:
    types = dict.fromkeys(TASK_TYPES)
    types["pick_and_place_simple"] = pick
    out = {
        "epoch": 2,
        "global_step": 6,
        "success": {"seen": {"overall": seen, **types}, "unseen": {"overall": unseen, **types}},
        "games": {"seen": {"overall": 4}, "unseen": {"overall": 4}},
    }
    if admissible is not None:  # older results files have no turn rates: the columns are then "-"
        rates = {"admissible_rate": admissible, "format_rate": 1.0, "turns": 20}
        out["turn_rates"] = {"seen": rates, "unseen": {**rates, "admissible_rate": admissible / 2}}
    return out


def write_run(root, cell: str, seed: int, data: dict | None) -> None:
    d = root / "runs" / cell / f"seed_{seed}"
    d.mkdir(parents=True)
    if data is not None:
        (d / "eval_results.json").write_text(json.dumps(data))


@pytest.fixture
def out(tmp_path):
    write_run(tmp_path, "opd", 0, payload(0.25, 0.5, pick=1.0, admissible=0.5))
    write_run(tmp_path, "opd", 1, payload(0.75, 0.25, pick=0.0, admissible=0.25))
    write_run(tmp_path, "sage_opd", 0, payload(0.5, 0.5, pick=None))
    write_run(tmp_path, "sage_opd", 1, payload(1.0, 0.25, pick=0.5))
    write_run(tmp_path, "sage_opd", 2, None)  # unfinished: ignored
    write_run(tmp_path, "teacher", 0, payload(0.0, 0.125))
    return tmp_path


def test_mean_std_and_relative_change():
    assert mean_std([0.25, 0.75]) == (0.5, pytest.approx(math.sqrt(0.125)))  # ddof=1
    assert mean_std([0.4]) == (0.4, 0.0)
    assert mean_std([None, 0.2, None]) == (0.2, 0.0)
    assert mean_std([None]) == (None, None)
    assert relative_change(0.45, 0.375) == pytest.approx(0.2)
    assert relative_change(0.3, 0.0) is None and relative_change(0.3, None) is None


def test_aggregate_exact(out):
    runs = {c: load_eval_results(out, c) for c in ("teacher", "opd", "sage_opd", "missing")}
    assert sorted(runs["sage_opd"]) == [0, 1]
    rows = {r["cell"]: r for r in aggregate(runs, {"sage_opd": "SAGE-OPD"})}
    opd, sage, teacher = rows["opd"], rows["sage_opd"], rows["teacher"]
    assert (opd["seeds"], sage["seeds"], teacher["seeds"], rows["missing"]["seeds"]) == (2, 2, 1, 0)
    assert sage["label"] == "SAGE-OPD" and opd["label"] == "opd"
    assert opd["seen/overall/mean"] == 0.5 and opd["seen/overall/std"] == pytest.approx(math.sqrt(0.125))
    assert opd["unseen/overall/mean"] == 0.375 and opd["unseen/overall/std"] == pytest.approx(
        math.sqrt(0.03125)
    )
    assert sage["seen/overall/mean"] == 0.75 and sage["unseen/overall/mean"] == 0.375
    assert sage["seen/pick_and_place_simple/mean"] == 0.5 and sage["seen/pick_and_place_simple/std"] == 0.0
    assert opd["unseen/pick_and_place_simple/mean"] == 0.5
    assert sage["seen/look_at_obj_in_light/mean"] is None  # no games of that type
    assert teacher["unseen/overall/std"] == 0.0
    assert sage["rel_seen_vs_opd"] == pytest.approx(0.5) and sage["rel_unseen_vs_opd"] == 0.0
    assert teacher["rel_unseen_vs_opd"] == pytest.approx((0.125 - 0.375) / 0.375)
    assert teacher["rel_seen_vs_opd"] == -1.0
    assert rows["missing"]["seen/overall/mean"] is None and rows["missing"]["rel_seen_vs_opd"] is None
    assert opd["seen/admissible_rate/mean"] == 0.375 and opd["unseen/admissible_rate/mean"] == 0.1875
    assert opd["seen/admissible_rate/std"] == pytest.approx(math.sqrt(0.03125))
    assert opd["seen/format_rate/mean"] == 1.0 and sage["seen/admissible_rate/mean"] is None


def test_relative_change_na_without_or_zero_baseline(out):
    no_opd = aggregate({"sage_opd": load_eval_results(out, "sage_opd")})
    assert no_opd[0]["rel_unseen_vs_opd"] is None
    zero = aggregate({"opd": {0: payload(0.0, 0.0)}, "x": {0: payload(0.5, 0.5)}})
    assert zero[1]["rel_seen_vs_opd"] is None and "n/a" in to_markdown(zero)


def test_write_results_tables(out):
    rows = write_results(out, ["teacher", "opd", "sage_opd"], {"sage_opd": "SAGE-OPD", "opd": "OPD"})
    assert [r["cell"] for r in rows] == ["teacher", "opd", "sage_opd"]
    md = (out / "results.md").read_text()
    assert "| SAGE-OPD | 2 | 75.0 ± 35.4 | 37.5 ± 17.7 | +50.0% | +0.0% | - | - |" in md
    assert "| teacher | 1 | 0.0 | 12.5 | -100.0% | -66.7% | - | - |" in md  # one seed: no ± std
    assert "| OPD | 2 | 50.0 ± 35.4 | 37.5 ± 17.7 | +0.0% | +0.0% | 37.5 ± 17.7 | 18.8 ± 8.8 |" in md
    assert all(t in md for t in TASK_TYPES)
    with open(out / "results.csv") as f:
        table = {r["cell"]: r for r in csv.DictReader(f)}
    assert float(table["sage_opd"]["unseen/overall/mean"]) == 0.375
    assert float(table["teacher"]["seen/overall/std"]) == 0.0
    assert table["teacher"]["seen/look_at_obj_in_light/mean"] == "n/a"
    assert float(table["opd"]["unseen/admissible_rate/mean"]) == 0.1875
    assert (out / "epochs.csv").is_file()


def test_epoch_metrics_and_epochs_csv(out):
    d = out / "runs" / "sage_opd" / "seed_0"
    (d / "metrics.csv").write_text(
        "epoch,step,train/loss_step,train/gate/skip_rate,train/confidence_mean,val/seen/success\n"
        "0,0,0.5,,,\n"
        "0,1,,0.25,0.75,\n"
        "0,1,,,,0.5\n"
        "1,3,,0.5,0.625,\n"
    )
    (d / "val_history.jsonl").write_text(
        json.dumps(
            {"epoch": 1, "global_step": 3, "success": {"seen": {"overall": 0.5}, "unseen": {"overall": 0.25}}}
        )
        + "\n"
    )
    metrics = read_epoch_metrics(d / "metrics.csv")
    assert metrics == {
        0: {"train/gate/skip_rate": 0.25, "train/confidence_mean": 0.75},
        1: {"train/gate/skip_rate": 0.5, "train/confidence_mean": 0.625},
    }
    write_results(out, ["sage_opd"])
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["epoch"]) for r in rows] == [("0", "0"), ("0", "1")]
    assert rows[1]["val/unseen/success"] == "0.25" and rows[1]["train/gate/skip_rate"] == "0.5"
    assert rows[0]["val/seen/success"] == "n/a"


def test_make_plots_from_hand_made_files(out):
    from sage.study.plots import make_plots

    d = out / "runs" / "sage_opd" / "seed_0"
    for e, (skip, conf) in enumerate([(0.5, 0.6), (0.25, 0.7)]):
        with open(d / "val_history.jsonl", "a") as f:
            f.write(
                json.dumps(
                    {"epoch": e, "success": {"seen": {"overall": 0.1 * e}, "unseen": {"overall": 0.0}}}
                )
                + "\n"
            )
        with open(d / "metrics.csv", "a") as f:
            f.write(
                ("epoch,step,train/gate/skip_rate,train/confidence_mean\n" if e == 0 else "")
                + f"{e},{e},{skip},{conf}\n"
            )
    turn = {
        "step": 0,
        "action": "go to fridge 1",
        "feedback": "You arrive at fridge 1.",
        "gate_label": "SKIP",
        "gate": 0.0,
        "confidence_mean": 0.8,
    }
    episode = {
        "epoch": 1,
        "task": "put a cool apple in countertop.",
        "task_type": "pick_cool_then_place_in_recep",
        "won": False,
        "length": 2,
        "turns": [turn, {**turn, "step": 1, "gate_label": "STRONG", "confidence_mean": None, "action": ""}],
    }
    (d / "episodes").mkdir()
    (d / "episodes" / "epoch_001.jsonl").write_text(json.dumps(episode) + "\n")
    pngs = make_plots(out, ["teacher", "opd", "sage_opd"], fitted=["opd", "sage_opd"])
    assert [p.name for p in pngs] == [
        "success_vs_epoch.png",
        "final_metrics.png",
        "gate_vs_epoch.png",
        "episode_sage_opd_seed0_epoch_001.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_final_values_per_seed(out):
    """The final-metrics plot gets every finished seed's value (not a mean), and nothing for missing rates."""
    from sage.study.plots import final_values

    opd = final_values(out, "opd")
    assert opd["success"] == {"seen": [0.25, 0.75], "unseen": [0.5, 0.25]}
    assert opd["admissible_rate"] == {"seen": [0.5, 0.25], "unseen": [0.25, 0.125]}
    sage = final_values(out, "sage_opd")  # seed 2 unfinished; no turn rates in these files
    assert sage["success"] == {"seen": [0.5, 1.0], "unseen": [0.5, 0.25]}
    assert sage["admissible_rate"] == {"seen": [], "unseen": []}
    assert final_values(out, "gkd_jsd")["success"] == {"seen": [], "unseen": []}


def test_gate_plot_keeps_only_cells_with_a_gate_or_confidence():
    from sage.study.plots import _gated

    flat = {"train/gate/skip_rate": {0: 0.0}, "train/gate/weak_rate": {0: 0.0}, "train/confidence_mean": {0: 1.0}}
    assert not _gated(flat)  # OPD / GKD / SFT: every turn ALWAYS, confidence 1
    assert _gated({**flat, "train/confidence_mean": {0: 1.0, 1: 0.9}})  # SAGE without its gate
    assert _gated({**flat, "train/gate/weak_rate": {0: 1.0}})  # SAGE without its confidence
    assert not _gated({})


def write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_table_reverse_kl_repeat_and_wall_time(tmp_path):
    """reverse_kl is nats/token (3 decimals, no %), repeat_rate a %, min/run the mean of fit + validate
    seconds over the finished seeds (run.json; no fit counts 0; no run.json: "-")."""
    for seed, (kl, repeat, fit, val) in enumerate([(0.1234, 0.25, 600, 120), (0.2, 0.5, 900, 180)]):
        p = payload(0.5, 0.25, admissible=0.5)
        for split in ("seen", "unseen"):
            p["turn_rates"][split] |= {"reverse_kl": kl, "repeat_rate": repeat}
        write_run(tmp_path, "opd", seed, p)
        write_json(tmp_path / "runs/opd" / f"seed_{seed}/run.json", {"fit_seconds": fit, "validate_seconds": val})
    write_run(tmp_path, "student_start", 0, payload(0.0, 0.0))
    write_json(tmp_path / "runs/student_start/seed_0/run.json", {"fit_seconds": None, "validate_seconds": 90})
    write_run(tmp_path, "old", 0, payload(0.0, 0.0))  # finished before run.json existed
    write_run(tmp_path, "opd", 2, None)  # unfinished: its run.json must not count
    write_json(tmp_path / "runs/opd/seed_2/run.json", {"fit_seconds": 6000, "validate_seconds": 6000})
    rows = {r["cell"]: r for r in write_results(tmp_path, ["opd", "student_start", "old"], {"opd": "OPD"})}
    assert rows["opd"]["wall_minutes/mean"] == pytest.approx(15.0)
    assert rows["opd"]["seen/reverse_kl/mean"] == pytest.approx(0.1617)
    md = (tmp_path / "results.md").read_text()
    assert "| OPD | 2 | 50.0 ± 0.0 | 25.0 ± 0.0 | +0.0% | +0.0% | 50.0 ± 0.0 | 25.0 ± 0.0 | 15.0 ± 4.2 |" in md
    assert "| OPD | 2 | 37.5 ± 17.7 | 37.5 ± 17.7 | 0.162 ± 0.054 | 0.162 ± 0.054 |" in md  # turn-rate table
    assert "| student_start | 1 | 0.0 | 0.0 | -100.0% | -100.0% | - | - | 1.5 |" in md
    assert "| old | 1 | 0.0 | 0.0 | -100.0% | -100.0% | - | - | - |" in md
    assert "| old | 1 | - | - | - | - |" in md
    with open(tmp_path / "results.csv") as f:
        table = {r["cell"]: r for r in csv.DictReader(f)}
    assert float(table["opd"]["wall_minutes/mean"]) == 15.0 and table["old"]["wall_minutes/mean"] == "n/a"
    assert float(table["opd"]["unseen/reverse_kl/mean"]) == pytest.approx(0.1617)


def game_record(split: str, game: str, won: bool, kl: float, epoch: int = 0) -> dict:
    """One line of val_games.jsonl / eval_games.jsonl: a 2-turn game with the given per-token KL."""
    return {"epoch": epoch, "split": split, "game_id": game, "task_type": "pick_and_place_simple", "won": won,
            "turns": 2, "admissible": [1, 0], "parsed": [1, 1], "repeat": [0, 1], "kl": [kl, kl],
            "kl_tokens": [1, 1]}


def test_curve_points_are_computed_on_the_games_played_during_fit(tmp_path):
    """Half panels during fit, whole panels at the end: the final point and x=0 are recomputed on the games
    the validations during fit played, so a curve never mixes game sets; the table's whole-panel figures
    (eval_results.json) are left alone, and a run without per-game records keeps them on its curve."""
    from sage.study.curves import FINAL, cell_curve, final_means, seed_points

    def lines(records):
        return "".join(json.dumps(r) + "\n" for r in records)

    root = tmp_path
    run = root / "runs/opd/seed_0"
    write_fit(run, [10, 20], {1: (0.5, 0.25)})
    (run / "val_games.jsonl").write_text(lines([game_record("seen", "a", True, 0.25, 1),
                                                game_record("seen", "b", False, 0.25, 1)]))
    whole = [game_record("seen", "a", True, 0.5), game_record("seen", "b", True, 0.5),
             game_record("seen", "c", False, 2.0), game_record("seen", "d", False, 2.0)]
    (run / "eval_games.jsonl").write_text(lines(whole))
    write_json(run / "eval_results.json", payload(0.5, 0.0))  # the whole panel: 2 of 4
    start = root / "runs/student_start/seed_0"
    write_run(root, "student_start", 0, payload(0.25, 0.0))
    (start / "eval_games.jsonl").write_text(lines([game_record("seen", "a", False, 1.0), game_record("seen", "b", False, 1.0),
                                                   game_record("seen", "c", True, 3.0), game_record("seen", "d", False, 3.0)]))

    (x, final), = [v for k, v in seed_points(run).items() if k == FINAL]
    assert x == 30 and final["success"]["seen"]["overall"] == 1.0 and final["turn_rates"]["seen"]["reverse_kl"] == 0.5
    curve = cell_curve(root, "opd", "student_start")
    assert curve["seen"] == [(0.0, 0.0, False), (30.0, 0.5, False), (30.0, 1.0, True)]  # games a, b only
    assert curve["seen_kl"] == [(0.0, 1.0, False), (30.0, 0.25, False), (30.0, 0.5, True)]
    assert curve["seen_admissible"] == [(0.0, 0.5, False), (30.0, 0.5, True)]  # val_history here has no rate
    assert final_means(root, "student_start")["seen"] == 0.25  # without games: the whole panel, as the table
    (run / "val_games.jsonl").unlink()  # no per-game records of the fit: the curve keeps the whole panels
    assert cell_curve(root, "opd", "student_start")["seen"] == [(0.0, 0.25, False), (30.0, 0.5, False),
                                                                  (30.0, 0.5, True)]


def write_fit(d, turns: list[float | None], vals: dict[int, tuple[float, float]]) -> None:
    """A fit's metrics.csv (sparse rows, as CSVLogger writes them: step rows, then the epoch row with
    train/turns) and val_history.jsonl: epoch -> (seen success, seen reverse KL)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = ["epoch,step,train/loss,train/turns,train/gate/skip_rate"]
    for e, t in enumerate(turns):
        rows += [f"{e},{2 * e},0.5,,", f"{e},{2 * e + 1},,{'' if t is None else t},0.25"]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "val_history.jsonl").write_text("".join(
        json.dumps({"epoch": e, "global_step": 2 * e + 1, "success": {"seen": {"overall": s}},
                    "turn_rates": {"seen": {"reverse_kl": kl}}}) + "\n" for e, (s, kl) in vals.items()))


def test_learning_curves_against_cumulative_turns(tmp_path):
    """x of a validation at the end of epoch e = train/turns summed over epochs 0..e; the final validate
    at the total; the start cell at x=0; mean over seeds of x and of y."""
    from sage.study.curves import FINAL, cell_curve, make_turn_curves, seed_points
    from sage.study.results import cumulative_turns

    root = tmp_path
    write_fit(root / "runs/opd/seed_0", [10, 20, 30], {0: (0.25, 0.5), 2: (0.5, 0.25)})
    write_fit(root / "runs/opd/seed_1", [20, 20, 20], {0: (0.75, 0.75), 2: (1.0, 0.5)})
    for seed, (s, kl) in enumerate([(0.5, 0.125), (0.25, 0.375)]):
        p = payload(s, 0.0)
        p["turn_rates"] = {"seen": {"reverse_kl": kl}}
        write_json(root / "runs/opd" / f"seed_{seed}/eval_results.json", p)
    start = payload(0.125, 0.0)
    start["turn_rates"] = {"seen": {"reverse_kl": 1.5}}
    write_run(root, "student_start", 0, start)

    assert {k: x for k, (x, _) in seed_points(root / "runs/opd/seed_0").items()} == {0: 10, 2: 60, FINAL: 60}
    curve = cell_curve(root, "opd", "student_start")
    assert curve["seen"] == [(0.0, 0.125, False), (15.0, 0.5, False), (60.0, 0.75, False), (60.0, 0.375, True)]
    assert curve["seen_kl"] == [(0.0, 1.5, False), (15.0, 0.625, False), (60.0, 0.375, False), (60.0, 0.25, True)]
    assert curve["unseen_kl"] == []  # no value anywhere
    assert cell_curve(root, "opd")["seen"][0] == (15.0, 0.5, False)  # without a start cell: from the first validation

    # an epoch without a turn count (older logs) ends the x axis there: no point after it, no final point
    assert cumulative_turns({0: {"train/turns": 4.0}, 2: {"train/turns": 5.0}}) == {0: 4.0}
    write_fit(root / "runs/gap/seed_0", [10, None, 30], {0: (0.25, 0.5), 2: (0.5, 0.25)})
    write_json(root / "runs/gap/seed_0/eval_results.json", payload(0.5, 0.0))
    assert list(seed_points(root / "runs/gap/seed_0")) == [0]

    write_results(root, ["student_start", "opd"])
    with open(root / "epochs.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["cell"] == "opd"]
    assert [(r["seed"], r["epoch"], r["student_turns"], r["train/turns"]) for r in rows] == [
        ("0", "0", "10.0", "10.0"), ("0", "1", "30.0", "20.0"), ("0", "2", "60.0", "30.0"),
        ("1", "0", "20.0", "20.0"), ("1", "1", "40.0", "20.0"), ("1", "2", "60.0", "20.0")]
    assert rows[2]["val/seen/reverse_kl"] == "0.25" and rows[1]["val/seen/success"] == "n/a"
    assert "train/judge_agreement" in rows[0] and rows[0]["train/gate/skip_rate"] == "0.25"
    pngs = make_turn_curves(root, ["student_start", "opd"], {}, fitted=["opd"], start_cell="student_start")
    assert [p.name for p in pngs] == ["curves_vs_turns.png"]
    assert make_turn_curves(root, ["student_start"], {}, fitted=[], start_cell="student_start") == []


def test_an_incomplete_evaluation_is_never_aggregated(out):
    """A seed whose evaluation lost games to the environment (`complete: false`) is in no table: a study
    would otherwise record its figures over the played games (or a 0 % over none) as the cell's."""
    lost = {**payload(0.0, 0.0), "complete": False, "episodes": {"seen": {"asked": 4, "played": 0, "lost": 4}}}
    write_run(out, "opd", 2, lost)
    assert sorted(load_eval_results(out, "opd")) == [0, 1]
    rows = write_results(out, ["opd"])
    assert rows[0]["seeds"] == 2 and rows[0]["seen/overall/mean"] == 0.5
