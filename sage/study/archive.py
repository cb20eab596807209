"""The results folder of `sage experiment` (matrix key `results:`): the small files of each finished run,
copied out of the run dir so that they can be committed to git as the run ends.

Why: a CPU study spans several sessions, and its run dirs (with 600 MB checkpoints) live outside git and
may be gone next session. What the tables and plots need is small: `<results>/runs/<cell>/seed_<S>/`
holds `eval_results.json` (the final validate; its presence marks the run done), `eval_games.jsonl`,
`metrics.csv`, `val_history.jsonl`, `val_games.jsonl`, `attempts.json` (those that exist) and `run.json` (wall seconds,
commands, git commit, finish time). Each seed folder is published whole (`sage.io.atomic_folder`): a
crash mid-copy leaves no half folder that would pass for done.

`commit` stages and commits exactly the paths it is given (`git commit --only`): whatever else is
staged or modified in the working tree stays so, uncommitted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from sage.io import atomic_folder, write_atomic

DONE_FILE = "eval_results.json"
RUN_INFO = "run.json"
FIT_FILES = ("attempts.json", "metrics.csv", "val_history*.jsonl", "val_games*.jsonl")  # the fit's log dir (the run dir)
VALIDATE_FILES = ("eval_games*.jsonl",)  # the validate subfolder; *: one file per rank under DDP


def seed_folder(results: Path, cell: str, seed: int) -> Path:
    return Path(results) / "runs" / cell / f"seed_{seed}"


def head_commit() -> str | None:
    """The git HEAD of the working directory, or None outside a repository (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_run_info(
    run_dir: Path, fit_seconds, validate_seconds, fit_command, validate_command, commit
) -> dict:
    """`run.json` in the run dir (before its done marker), so a run copied later still has its timings."""
    info = {
        "fit_seconds": None if fit_seconds is None else round(fit_seconds, 1),
        "validate_seconds": round(validate_seconds, 1),
        "fit_command": fit_command,
        "validate_command": validate_command,
        "commit": commit,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(run_dir / RUN_INFO, json.dumps(info, indent=1) + "\n")
    return info


def archive_run(run_dir: Path, dest: Path) -> list[Path]:
    """Copy a finished run's small files into `dest` (replacing an earlier copy whole); returns the paths
    written. A run dir without `run.json` (finished before it existed) gets one with null timings."""
    names = [p for pattern in FIT_FILES for p in sorted(run_dir.glob(pattern))]
    names += [p for pattern in VALIDATE_FILES for p in sorted((run_dir / "validate").glob(pattern))]
    with atomic_folder(dest) as tmp:
        for src in names:
            shutil.copyfile(src, tmp / src.name)
        if (run_dir / RUN_INFO).is_file():
            shutil.copyfile(run_dir / RUN_INFO, tmp / RUN_INFO)
        else:
            info = dict.fromkeys(("fit_seconds", "validate_seconds", "fit_command", "validate_command",
                                  "commit", "finished"))
            (tmp / RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")
        shutil.copyfile(run_dir / DONE_FILE, tmp / DONE_FILE)
        written = sorted(p.name for p in tmp.iterdir())
    return [dest / name for name in written]


def commit(paths: list[Path], message: str, lock_wait: float = 30.0) -> str | None:
    """`git add` then `git commit --only` of exactly `paths`; None on success, else one line saying why
    (not a repository, nothing changed, an ignored path...). A held index.lock (another runner of the
    same study committing its own run, or the engineer's git) is waited out for up to `lock_wait` s."""
    paths = [str(p) for p in paths]
    for cmd in (["git", "add", "--", *paths], ["git", "commit", "--only", "-m", message, "--", *paths]):
        waited = 0.0
        while True:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as exc:
                return f"git not runnable: {exc}"
            if out.returncode == 0 or "index.lock" not in out.stderr or waited >= lock_wait:
                break
            time.sleep(0.5)
            waited += 0.5
        if out.returncode != 0:  # git's reason: stderr's first line, else stdout's last ("nothing to commit")
            err, said = out.stderr.strip().splitlines(), out.stdout.strip().splitlines()
            why = err[0] if err else said[-1] if said else f"exit {out.returncode}"
            return f"`git {cmd[1]}` failed: {why}"
    return None
