"""Paired differences between a matrix's cells on the same evaluation games, with bootstrap intervals
(`paired.md`, rendered with the other tables by `sage experiment`).

Mean ± std over 2-3 seeds says how much training randomness moves a figure; it says nothing of how much
the 60 games of a panel do. Every cell's final evaluation plays the same fixed panels, so a cell and the
baseline can be compared game by game: for each split, each figure is the table's own ratio (wins / games,
admissible turns / turns, repeated turns / turns, summed KL / scored tokens) over the games both cells
played, pooled over each cell's finished seeds, and the interval comes from resampling those games with
replacement (the same resample for both cells: paired). An interval that holds 0 means the panel cannot
tell the two apart at that figure; it does not add the seed-to-seed spread, which the main table shows.
Besides every cell minus the baseline, the matrix's `contrasts` pair chosen cells the same way (e.g. the
full method minus each of its ablations: a positive admissible difference says the part helps there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sage.io import write_atomic
from sage.study.eval_games import game_records, kl_by_repeat
from sage.study.results import complete, seed_dirs

# figure -> (scale in the table, digits)
FIGURES = {
    "success": (100, 1),
    "admissible": (100, 1),
    "repeat": (100, 1),
    "reverse_kl": (1, 3),
    "reverse_kl_new_turns": (1, 3),  # only the turns that do not repeat the previous action
}
SPLITS = ("seen", "unseen")
RESAMPLES = 2000


def _sums(record: dict) -> dict[str, tuple[float, float]]:
    """One game's (numerator, denominator) of each figure."""
    turns = len(record["admissible"])
    out = {"success": (float(record["won"]), 1.0),
           "admissible": (float(sum(record["admissible"])), float(turns)),
           "repeat": (float(sum(record.get("repeat") or [])), float(turns) if record.get("repeat") else 0.0)}
    if record.get("kl") is not None:
        out["reverse_kl"] = (float(sum(record["kl"])), float(sum(record["kl_tokens"])))
        if record.get("repeat"):
            kl, tokens = kl_by_repeat(record)["new"]
            out["reverse_kl_new_turns"] = (float(kl), float(tokens))
    return out


def game_sums(output: str | Path, cell: str) -> tuple[dict[tuple[str, str], dict], int]:
    """(split, game id) -> figure -> [numerator, denominator] summed over the cell's finished seeds (those with
    per-game records of their final evaluation), and how many seeds that is."""
    table: dict[tuple[str, str], dict] = {}
    seeds = 0
    for d in seed_dirs(output, cell).values():
        files = sorted(d.glob("eval_games*.jsonl"))
        if not files or not (d / "eval_results.json").is_file() or not complete(json.loads((d / "eval_results.json").read_text())):
            continue  # unfinished, or an evaluation that lost games to the environment
        seeds += 1
        for record in game_records(files):
            row = table.setdefault((record["split"], record["game_id"]), {})
            for fig, (num, den) in _sums(record).items():
                acc = row.setdefault(fig, [0.0, 0.0])
                acc[0] += num
                acc[1] += den
    return table, seeds


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5th, 97.5th percentile) of ratio(a) - ratio(b), where a and b are (games, 2) arrays of
    numerators and denominators of the same games, resampled together."""
    def ratio(x):
        return x[..., 0].sum(-1) / x[..., 1].sum(-1)

    estimate = float(ratio(a) - ratio(b))
    idx = np.random.default_rng(seed).integers(0, len(a), size=(RESAMPLES, len(a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = ratio(a[idx]) - ratio(b[idx])
    diffs = diffs[np.isfinite(diffs)]
    low, high = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (float("nan"), float("nan"))
    return estimate, float(low), float(high)


def paired_row(cell: dict, cell_seeds: int, other: dict, other_seeds: int) -> dict | None:
    """Each split's figures of one cell minus another's on their common games, with the bootstrap interval;
    None when they share no game or the other has no finished seed. Inputs: `game_sums` of each."""
    common = sorted(set(cell) & set(other))
    if not common or not other_seeds:
        return None
    row = {"seeds": cell_seeds, "baseline_seeds": other_seeds}
    for split in SPLITS:
        games = [g for g in common if g[0] == split]
        row[f"{split}/games"] = len(games)
        for fig in FIGURES:
            pairs = [(cell[g][fig], other[g][fig]) for g in games if fig in cell[g] and fig in other[g]]
            if not pairs or not sum(p[0][1] for p in pairs) or not sum(p[1][1] for p in pairs):
                continue
            a = np.array([p[0] for p in pairs], dtype=np.float64)
            b = np.array([p[1] for p in pairs], dtype=np.float64)
            row[f"{split}/{fig}"] = paired_difference(a, b)
    return row


def paired_rows(output: str | Path, cells: list[str], baseline: str,
                contrasts: dict[str, list[str]] | None = None) -> list[dict]:
    """One row per cell (not the baseline) with finished seeds: its figures minus the baseline's (``vs`` =
    the baseline, ``contrast`` False); then, for each ``contrasts`` entry cell -> others, the cell minus each
    other (``vs`` = the other, ``contrast`` True), when both have finished seeds."""
    sums: dict[str, tuple[dict, int]] = {}

    def of(name: str) -> tuple[dict, int]:
        if name not in sums:
            sums[name] = game_sums(output, name)
        return sums[name]

    pairs = [(c, baseline, False) for c in cells if c != baseline]
    pairs += [(c, o, True) for c, others in (contrasts or {}).items() for o in others]
    rows = []
    for cell, vs, contrast in pairs:
        (mine, seeds), (theirs, their_seeds) = of(cell), of(vs)
        row = paired_row(mine, seeds, theirs, their_seeds) if seeds else None
        if row is not None:
            rows.append({"cell": cell, "vs": vs, "contrast": contrast, **row})
    return rows


def _cell(value, scale: float, digits: int) -> str:
    if value is None:
        return "-"
    est, low, high = (scale * v for v in value)
    return f"{est:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _tables(rows: list[dict], name_of) -> list[str]:
    """Per split, one row per pair: the row's name (``name_of(row)``), seeds, games and each figure."""
    lines = []
    for split in SPLITS:
        lines += [f"### {split}", "", "| method | seeds (vs) | games | " + " | ".join(FIGURES) + " |",
                  "|---|---|---|" + "---|" * len(FIGURES)]
        for r in rows:
            figs = " | ".join(_cell(r.get(f"{split}/{f}"), *FIGURES[f]) for f in FIGURES)
            lines.append(f"| {name_of(r)} | {r['seeds']} ({r['baseline_seeds']}) | {r[f'{split}/games']} | {figs} |")
        lines.append("")
    return lines


def to_markdown(rows: list[dict], labels: dict[str, str], baseline: str) -> str:
    label = labels.get(baseline, baseline)
    lines = [
        "# Paired differences on the same games",
        "",
        "One cell's final evaluation minus another's on the games both played: success, admissible and repeat in",
        "percentage points, reverse KL in nats/token over all turns and over the new turns only (those that do",
        "not repeat the previous action: a looping transcript makes both models' next tokens easy to predict);",
        f"pooled over each cell's finished seeds, with a 95 % interval from {RESAMPLES} paired resamples of the",
        "games (`sage/paired.py`). An interval holding 0: the panel cannot tell the two apart there. Seed-to-seed",
        "spread is not in it (see results.md).",
        "",
    ]
    if any(not r["contrast"] for r in rows):
        lines += [f"## Each cell minus {label}", "",
                  *_tables([r for r in rows if not r["contrast"]], lambda r: labels.get(r["cell"], r["cell"]))]
    for cell in dict.fromkeys(r["cell"] for r in rows if r["contrast"]):
        mine = [r for r in rows if r["contrast"] and r["cell"] == cell]
        lines += [f"## {labels.get(cell, cell)} minus each of these", "",
                  *_tables(mine, lambda r: labels.get(r["vs"], r["vs"]))]
    return "\n".join(lines)


def write_paired(output: str | Path, cells: list[str], labels: dict[str, str], baseline: str,
                 contrasts: dict[str, list[str]] | None = None) -> Path | None:
    """`paired.md` in the output dir when any pair has finished seeds; None otherwise."""
    rows = paired_rows(output, cells, baseline, contrasts)
    if not rows:
        return None
    path = Path(output) / "paired.md"
    write_atomic(path, to_markdown(rows, labels, baseline))
    return path
