"""Resuming an interrupted `sage experiment` fit from its last checkpoint instead of from scratch.

Why: a trained cell of the CPU study takes about an hour of one lane, and a session that ends kills the
run in progress; starting it over would throw that hour away at every session boundary. A killed fit
leaves `<run>/checkpoints/last.ckpt` (every N optimizer steps and at each epoch end:
`sage.checkpointing`) and its kept rollouts, and `sage fit --ckpt_path` continues from there, into the
same run dir (the logger's version is fixed by the runner).

Two things in that dir need help to survive it:
- Lightning's CSVLogger deletes a `metrics.csv` it finds in its folder, so the killed attempt's is set
  aside first (`metrics.part<N>.csv`) and merged back once the fit ends: rows the resumed fit logged
  again (same epoch, step and keys, i.e. the work after the checkpoint, redone) replace the earlier ones.
- the evaluation callback appends to `val_history.jsonl` and `val_games.jsonl`, so a validation that ran
  after the checkpoint and again after the resume is kept once (the later one).
Wall time: `attempts.json` holds each attempt's start and end; a killed attempt ends at the newest file
it wrote.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from sage.io import atomic_path, write_atomic

ATTEMPTS = "attempts.json"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
APPENDED = ("val_history.jsonl", "val_games.jsonl")


def _fit_files(d: Path) -> list[Path]:
    """The files a fit wrote in its run dir: not the final validate's (`validate.log`, `validate/`)."""
    return [p for p in d.rglob("*") if p.is_file() and p.name != "validate.log" and "validate" not in
            p.relative_to(d).parts[:1]]


def _newest_mtime(d: Path) -> float:
    return max((p.stat().st_mtime for p in _fit_files(d)), default=time.time())


def load_attempts(d: Path) -> list[dict]:
    p = d / ATTEMPTS
    return json.loads(p.read_text()) if p.is_file() else []


def _save_attempts(d: Path, attempts: list[dict]) -> None:
    write_atomic(d / ATTEMPTS, json.dumps(attempts, indent=1) + "\n")


def fit_finished(d: Path) -> bool:
    """The fit in `d` ended well (its last attempt closed by `end_attempt`)."""
    attempts = load_attempts(d)
    return bool(attempts) and bool(attempts[-1].get("ok"))


def checkpoint_to_resume(d: Path) -> Path | None:
    """The last checkpoint of a fit that started in `d` and never finished (None: nothing to resume)."""
    ckpt = d / LAST_CKPT
    return ckpt if ckpt.is_file() and not fit_finished(d) else None


def start_attempt(d: Path) -> int:
    """Record a fit attempt's start (closing a killed earlier one at its newest file); returns its index.
    A run dir from before this record existed counts its files' time span as one attempt."""
    attempts = load_attempts(d)
    if not attempts and (d / LAST_CKPT).is_file():
        first = min(p.stat().st_mtime for p in _fit_files(d))
        attempts.append({"start": first, "end": None})
    if attempts and attempts[-1].get("end") is None:
        attempts[-1]["end"] = _newest_mtime(d)
        attempts[-1]["ok"] = False
    attempts.append({"start": time.time(), "end": None})
    _save_attempts(d, attempts)
    return len(attempts) - 1


def end_attempt(d: Path) -> None:
    """Close the running attempt as finished."""
    attempts = load_attempts(d)
    attempts[-1].update(end=time.time(), ok=True)
    _save_attempts(d, attempts)


def fit_seconds(d: Path) -> float:
    """The fit's wall seconds over all its attempts."""
    return sum(a["end"] - a["start"] for a in load_attempts(d) if a.get("end") is not None)


def set_aside_logs(d: Path) -> Path | None:
    """Move the killed attempt's metrics.csv out of the CSVLogger's way (it would delete it)."""
    src = d / "metrics.csv"
    if not src.is_file():
        return None
    k = len(list(d.glob("metrics.part*.csv")))
    dest = d / f"metrics.part{k}.csv"
    src.rename(dest)
    return dest


def _row_key(row: dict) -> tuple:
    return row.get("epoch", ""), row.get("step", ""), frozenset(k for k, v in row.items() if v not in ("", None))


def merge_logs(d: Path) -> None:
    """Fold the set-aside metrics parts (oldest first) and the last attempt's metrics.csv into one
    metrics.csv, a later attempt's row replacing an earlier one with the same epoch, step and keys; keep
    each appended validation record once (the last)."""
    parts = sorted(d.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part")))
    if parts:
        tables = [list(csv.DictReader(p.open(newline=""))) for p in [*parts, d / "metrics.csv"] if p.is_file()]
        rows: dict[tuple, dict] = {}
        for table in tables:
            for row in table:
                key = _row_key(row)
                rows.pop(key, None)  # re-inserted last: the redone row takes the later position
                rows[key] = row
        keys = sorted({k for row in rows.values() for k in row})
        with atomic_path(d / "metrics.csv") as merged, merged.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(sorted(rows.values(), key=lambda r: _int(r.get("step"))))
        for p in parts:
            p.unlink()
    for name in APPENDED:
        _dedupe_jsonl(d / name)


def _int(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


def _dedupe_jsonl(path: Path) -> None:
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("epoch"), r.get("global_step"), r.get("split"), r.get("game_id"))
        seen.pop(key, None)
        seen[key] = r
    text = "".join(json.dumps(r) + "\n" for r in seen.values())
    if len(seen) != len(records):
        write_atomic(path, text)
