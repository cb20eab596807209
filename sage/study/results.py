"""Turn a finished experiment matrix into tables: mean ± std over seeds per cell, and per-epoch series.

Pure functions over the files a run leaves behind (`eval_results.json`, `val_history.jsonl`,
`metrics.csv`, `run.json`), so the tables can be rebuilt at any time (`sage experiment --aggregate-only`)
and tested on hand-made inputs. Layout read: `<root>/runs/<cell>/seed_<S>/`, root being the matrix's
`results:` folder (the committed copies) or its `output`.

The outputs are committed and must re-render byte for byte from the same inputs: no timestamps or paths in
them, seeds in numeric order, floats as Python's shortest repr (CSV) or fixed decimals (markdown).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from callbacks.evaluation import TURN_RATES  # the turn-level figures the evaluation records
from sage.envs import TASK_TYPES
from sage.io import write_atomic

SPLITS = ("seen", "unseen")
KEYS = ("overall", *TASK_TYPES)
BASELINE = "opd"
NA = "n/a"
EPOCH_METRICS = (
    "train/loss_epoch",
    "train/episode_success",
    "train/admissible_rate",  # of the epoch's (sampled) rollout turns
    "train/repeat_rate",
    "train/turns",  # rollout turns of the epoch (`sage.epoch.episode_stats`): the x of the learning curves
    "train/judge_agreement",
    "train/gate/skip_rate",
    "train/gate/weak_rate",
    "train/gate/strong_rate",
    "train/confidence_mean",
)


# -- reading one run ---------------------------------------------------------------------------------
def eval_value(payload: dict, section: str, split: str, key: str) -> float | None:
    """`payload[section][split][key]` of an evaluation record (eval_results.json, a val_history line), or
    None where any level is missing (older files have no "turn_rates")."""
    return payload.get(section, {}).get(split, {}).get(key)


def seed_dirs(output: str | Path, cell: str) -> dict[int, Path]:
    """seed -> run dir, for every `seed_<S>` folder of a cell (finished or not), in numeric seed order
    (seed_10 after seed_2: the order means are summed in, so it must not depend on the listing)."""
    root = Path(output) / "runs" / cell
    dirs = {}
    for d in root.glob("seed_*") if root.is_dir() else []:
        tail = d.name.removeprefix("seed_")
        if d.is_dir() and tail.lstrip("-").isdigit():
            dirs[int(tail)] = d
    return dict(sorted(dirs.items()))


def complete(payload: dict) -> bool:
    """An evaluation that played every game it asked for (files older than the field are complete)."""
    return payload.get("complete", True) is not False


def load_eval_results(output: str | Path, cell: str) -> dict[int, dict]:
    """seed -> the `eval_results.json` payload, for the seeds that finished with a complete evaluation (one
    that lost games to the environment is never aggregated: `callbacks.evaluation`)."""
    out = {}
    for seed, d in seed_dirs(output, cell).items():
        if (d / "eval_results.json").is_file():
            payload = json.loads((d / "eval_results.json").read_text())
            if complete(payload):
                out[seed] = payload
    return out


def run_seconds(info: dict) -> float | None:
    """A run's wall time from its `run.json` (`sage.study.experiment`): fit + validate seconds (no fit: 0)."""
    if info.get("validate_seconds") is None:
        return None
    return float(info.get("fit_seconds") or 0.0) + float(info["validate_seconds"])


def load_wall_seconds(output: str | Path, cell: str) -> dict[int, float]:
    """seed -> wall seconds of each finished seed with a `run.json` that has them."""
    out = {}
    for seed, d in seed_dirs(output, cell).items():
        if (d / "eval_results.json").is_file() and (d / "run.json").is_file():
            seconds = run_seconds(json.loads((d / "run.json").read_text()))
            if seconds is not None:
                out[seed] = seconds
    return out


def read_val_history(path: str | Path) -> list[dict]:
    """The JSON lines of `val_history.jsonl` (one per validation during fit); [] when absent."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_epoch_metrics(path: str | Path, names=EPOCH_METRICS) -> dict[int, dict[str, float]]:
    """epoch -> {metric: value} from a CSVLogger `metrics.csv`, whose rows are sparse: per epoch the
    last non-empty value of each wanted column wins."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for name in names:
                if row.get(name) not in (None, ""):
                    out.setdefault(epoch, {})[name] = float(row[name])
    return {e: v for e, v in sorted(out.items()) if v}


def cumulative_turns(metrics: dict[int, dict[str, float]]) -> dict[int, float]:
    """epoch e -> `train/turns` summed over epochs 0..e, the student rollout turns a validation at the end
    of epoch e has seen. Stops at the first epoch without a count (logs older than the column)."""
    out, total = {}, 0.0
    for e in range(max(metrics, default=-1) + 1):
        turns = metrics.get(e, {}).get("train/turns")
        if turns is None:
            break
        total += turns
        out[e] = total
    return out


# -- statistics ---------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the non-missing values; std is 0 for one value, None for none."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def relative_change(value: float | None, base: float | None) -> float | None:
    """(value - base) / base; None ("n/a") when either is missing or the base is 0."""
    if value is None or base is None or base == 0:
        return None
    return (value - base) / base


def aggregate(
    runs: dict[str, dict[int, dict]],
    labels: dict[str, str] | None = None,
    baseline: str = BASELINE,
    walls: dict[str, dict[int, float]] | None = None,
) -> list[dict]:
    """One row per cell (in `runs` order): seeds, mean/std of success and turn rates per split and key,
    the wall minutes per run (`walls`: cell -> seed -> seconds), and the relative change of seen/unseen
    overall success vs the `baseline` cell's mean."""
    labels, walls = labels or {}, walls or {}
    rows = []
    for cell, by_seed in runs.items():
        row: dict = {"cell": cell, "label": labels.get(cell) or cell, "seeds": len(by_seed)}
        minutes = [s / 60 for seed, s in walls.get(cell, {}).items() if seed in by_seed]
        row["wall_minutes/mean"], row["wall_minutes/std"] = mean_std(minutes)
        for split in SPLITS:
            for section, keys in (("success", KEYS), ("turn_rates", TURN_RATES)):
                for key in keys:
                    vals = [eval_value(p, section, split, key) for p in by_seed.values()]
                    row[f"{split}/{key}/mean"], row[f"{split}/{key}/std"] = mean_std(vals)
        rows.append(row)
    base = next((r for r in rows if r["cell"] == baseline and r["seeds"]), None)
    for row in rows:
        for split in SPLITS:
            ref = base[f"{split}/overall/mean"] if base else None
            row[f"rel_{split}_vs_{baseline}"] = relative_change(row[f"{split}/overall/mean"], ref)
    return rows


# -- writing --------------------------------------------------------------------------------------
def _pct(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 and std is not None else "")


def _num(mean: float | None, std: float | None, seeds: int, digits: int = 3) -> str:
    """A value that is no fraction (reverse KL in nats/token, minutes): fixed decimals, not %."""
    if mean is None:
        return "-"
    return _fixed(mean, digits) + (f" ± {_fixed(std, digits)}" if seeds > 1 and std is not None else "")


def _fixed(value: float, digits: int) -> str:
    """Fixed decimals, without the "-" of a value that rounds to 0 (a KL of -1e-7 is numerical noise)."""
    text = f"{value:.{digits}f}"
    return text.removeprefix("-") if float(text) == 0 else text


def _rel(value: float | None) -> str:
    return NA if value is None else f"{100 * value:+.1f}%"


def to_markdown(rows: list[dict], baseline: str = BASELINE, title: str = "Results") -> str:
    """Main table (overall success, relative change vs the baseline) then one per-task-type table per
    split. Success in %, mean ± sample std over seeds."""
    lines = [
        f"# {title}",
        "",
        f"ALFWorld success % (greedy), mean ± std over seeds; relative change of the mean vs `{baseline}`.",
        "Admissible: % of evaluation turns whose action was an admissible command (a finer signal when",
        "success is near 0). min/run: wall minutes of one run (fit + final validate), mean over seeds.",
        "",
    ]
    lines += [
        f"| method | seeds | seen | unseen | seen vs {baseline} | unseen vs {baseline} "
        "| admissible seen | admissible unseen | min/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["seeds"]
        lines.append(
            f"| {r['label']} | {n} | {_pct(r['seen/overall/mean'], r['seen/overall/std'], n)} | "
            f"{_pct(r['unseen/overall/mean'], r['unseen/overall/std'], n)} | "
            f"{_rel(r[f'rel_seen_vs_{baseline}'])} | {_rel(r[f'rel_unseen_vs_{baseline}'])} | "
            f"{_pct(r['seen/admissible_rate/mean'], r['seen/admissible_rate/std'], n)} | "
            f"{_pct(r['unseen/admissible_rate/mean'], r['unseen/admissible_rate/std'], n)} | "
            f"{_num(r['wall_minutes/mean'], r['wall_minutes/std'], n, 1)} |"
        )
    lines += [
        "",
        "## turn rates",
        "",
        "Repeat: % of evaluation turns repeating the game's previous action (stuck in a loop). Reverse KL:",
        "KL(student || teacher) in nats per response token (- without a teacher).",
        "",
        "| method | seeds | repeat seen | repeat unseen | reverse KL seen | reverse KL unseen |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["seeds"]
        lines.append(
            f"| {r['label']} | {n} | "
            + " | ".join(_pct(r[f"{s}/repeat_rate/mean"], r[f"{s}/repeat_rate/std"], n) for s in SPLITS)
            + " | "
            + " | ".join(_num(r[f"{s}/reverse_kl/mean"], r[f"{s}/reverse_kl/std"], n) for s in SPLITS)
            + " |"
        )
    for split in SPLITS:
        lines += [
            "",
            f"## {split}: success % per task type",
            "",
            "| method | " + " | ".join(TASK_TYPES) + " |",
            "|---" * (len(TASK_TYPES) + 1) + "|",
        ]
        for r in rows:
            cells = [_pct(r[f"{split}/{k}/mean"], r[f"{split}/{k}/std"], r["seeds"]) for k in TASK_TYPES]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_columns(baseline: str = BASELINE) -> list[str]:
    cols = ["cell", "label", "seeds"]
    cols += [f"{s}/{k}/{m}" for s in SPLITS for k in (*KEYS, *TURN_RATES) for m in ("mean", "std")]
    cols += ["wall_minutes/mean", "wall_minutes/std"]
    return cols + [f"rel_seen_vs_{baseline}", f"rel_unseen_vs_{baseline}"]


def write_csv(rows: list[dict], path: str | Path, columns: list[str]) -> None:
    """Plain CSV; missing values as "n/a" (pandas reads it as NaN). Written atomically."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: (NA if r.get(c) is None else r.get(c)) for c in columns})
    write_atomic(path, buf.getvalue())


VAL_COLUMNS = tuple(f"val/{s}/{k}" for k in ("success", "admissible_rate", "reverse_kl") for s in SPLITS)
EPOCH_COLUMNS = ("cell", "seed", "epoch", "global_step", "student_turns", *VAL_COLUMNS, *EPOCH_METRICS)


def epoch_rows(output: str | Path, cells: list[str]) -> list[dict]:
    """One row per cell x seed x epoch: validation during fit, the epoch's train metrics, and
    `student_turns`, the rollout turns up to the end of the epoch (`cumulative_turns`)."""
    rows = []
    for cell in cells:
        for seed, d in seed_dirs(output, cell).items():
            metrics = read_epoch_metrics(d / "metrics.csv")
            per_epoch: dict[int, dict] = {e: dict(m) for e, m in metrics.items()}
            for e, turns in cumulative_turns(metrics).items():
                per_epoch[e]["student_turns"] = turns
            for v in read_val_history(d / "val_history.jsonl"):
                e = per_epoch.setdefault(int(v["epoch"]), {})
                e["global_step"] = v.get("global_step")
                for split in SPLITS:
                    e[f"val/{split}/success"] = eval_value(v, "success", split, "overall")
                    for key in ("admissible_rate", "reverse_kl"):
                        e[f"val/{split}/{key}"] = eval_value(v, "turn_rates", split, key)
            rows += [{"cell": cell, "seed": seed, "epoch": e, **m} for e, m in sorted(per_epoch.items())]
    return rows


def write_results(
    output: str | Path,
    cells: list[str],
    labels: dict[str, str] | None = None,
    baseline: str = BASELINE,
    title: str = "Results",
) -> list[dict]:
    """`results.md`, `results.csv` and `epochs.csv` in the output dir; returns the table rows."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    runs = {c: load_eval_results(output, c) for c in cells}
    rows = aggregate(runs, labels, baseline, {c: load_wall_seconds(output, c) for c in cells})
    write_atomic(output / "results.md", to_markdown(rows, baseline, title))
    write_csv(rows, output / "results.csv", csv_columns(baseline))
    write_csv(epoch_rows(output, cells), output / "epochs.csv", list(EPOCH_COLUMNS))
    return rows
