"""`sage experiment`: run a method x ablation x seed matrix of `sage fit` / `sage validate` subprocesses,
then aggregate the results (`sage.study.results`; paired differences to the baseline on the same games:
`sage.study.paired`) and draw the plots (`sage.study.plots`).

    sage experiment --matrix configs/experiments/cpu_small.yaml [--dry-run] [--only CELL ...]
                    [--seeds S ...] [--output DIR] [--aggregate-only] [--commit]

Each cell x seed is a fresh process (nothing leaks between runs) logging into
`<output>/runs/<cell>/seed_<S>/` (fit) and its `validate/` subfolder (a second CSVLogger there would
otherwise delete the fit's metrics.csv). The run's `run.json` (wall seconds, commands, git commit) then
its `eval_results.json` are written into the run dir last, so the latter marks a finished run: reruns
skip it. A fit that was killed after its first checkpoint resumes from `last.ckpt` in the same run dir
(`sage.study.run_resume`); a validate cut short is redone; anything else starts over.

The matrix's keys are in `sage.study.matrix`. With its `results:` folder (`sage.study.archive`), each finished
run's small files are copied there, tables and plots are read from and written there (re-rendered after
each run), and a run found there counts as done even when its run dir is gone (a later session).
`--commit` then commits exactly those files after each run (nothing else the working tree holds).
`--aggregate-only` rebuilds the tables and plots from the results folder alone, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sage import preemption
from sage.errors import ArgumentParser, UsageError
from sage.io import write_atomic
from sage.paths import check_writable_dir
from sage.study import archive, run_resume
from sage.study.archive import DONE_FILE
from sage.study.matrix import Cell, Matrix, MatrixError, cli_args, load_matrix
from sage.study.results import complete

__all__ = ["Cell", "Matrix", "MatrixError", "cli_args", "load_matrix", "fit_command", "validate_command",
           "run"]  # the matrix's names stay importable from here


# -- commands -----------------------------------------------------------------------------------------
def sage_command() -> list[str]:
    """This interpreter's `sage` entry point (the venv the experiment itself runs in)."""
    return [sys.executable, "-m", "sage.cli"]


def recorded(cmd: list[str]) -> str:
    """A command as run.json keeps it: `sage ...`, not this machine's interpreter path (committed files
    travel to other machines)."""
    return shlex.join(["sage", *cmd[len(sage_command()) :]])


def cell_seeds(matrix: Matrix, cell: Cell) -> list[int]:
    return matrix.seeds if cell.seeds is None else cell.seeds


def run_dir(matrix: Matrix, cell: Cell, seed: int) -> Path:
    return matrix.output / "runs" / cell.name / f"seed_{seed}"


def _logger(save_dir: Path, name: str, version: str) -> list[str]:
    p = "--trainer.logger.init_args."
    return [f"{p}save_dir", str(save_dir), f"{p}name", name, f"{p}version", version]


def _base(matrix: Matrix, cell: Cell, seed: int) -> list[str]:
    configs = [t for c in cell.configs for t in ("--config", c)]
    return [
        *configs,
        *matrix.common_args,
        *cell.args,
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
    ]


def fit_command(matrix: Matrix, cell: Cell, seed: int) -> list[str]:
    d = run_dir(matrix, cell, seed)
    return [*sage_command(), "fit", *_base(matrix, cell, seed), *_logger(d.parent.parent, cell.name, d.name)]


def validate_command(matrix: Matrix, cell: Cell, seed: int, ckpt: Path | None) -> list[str]:
    d = run_dir(matrix, cell, seed)
    extra = [*matrix.validate_args, *cell.validate_args]
    cmd = [*sage_command(), "validate", *_base(matrix, cell, seed), *extra,
           *_logger(d.parent, d.name, "validate")]
    return cmd + (["--ckpt_path", str(ckpt)] if ckpt else [])


def newest_checkpoint(d: Path) -> Path | None:
    """`last.ckpt` when the run saved one, else the most recently written checkpoint."""
    if (d / "checkpoints" / "last.ckpt").is_file():
        return d / "checkpoints" / "last.ckpt"
    ckpts = sorted((d / "checkpoints").glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return ckpts[-1] if ckpts else None


# -- running ------------------------------------------------------------------------------------------
def _run(cmd: list[str], log: Path) -> int:
    """Run one `sage fit|validate`, its output in ``log``; its exit code. A SIGTERM to the runner is passed
    on to the child, which stops at its next boundary and saves (`sage.preemption`); the runner waits for
    it, then stops with `Preempted` (exit 143). Without this the runner's own exit would kill the child
    before it saved, losing the epoch in progress."""
    stopping: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum, frame) -> None:
        stopping.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if main_thread else None
    try:
        with open(log, "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
            if stopping:  # the signal came before the child existed
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if stopping:
        raise preemption.Preempted(f"while {shlex.join(cmd[len(sage_command()):][:1])} ran; it exited {rc} "
                                   f"(log: {log}); the same command resumes the matrix")
    return rc


def _tail(log: Path, n: int = 15) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def run_one(matrix: Matrix, cell: Cell, seed: int, commit: bool = False) -> str:
    """Fit (if the cell trains) then validate one cell x seed; returns "skipped", "ok" or "failed". With a
    results folder the finished run is copied there (`publish`), and a run found there is done."""
    d, tag = run_dir(matrix, cell, seed), f"[{cell.name}/seed_{seed}]"
    kept = archive.seed_folder(matrix.results, cell.name, seed) if matrix.results is not None else None
    if kept is not None and (kept / DONE_FILE).is_file():
        print(f"{tag} skipped: {kept / DONE_FILE} exists", flush=True)
        return "skipped"
    if (d / DONE_FILE).is_file():
        print(f"{tag} skipped: {d / DONE_FILE} exists", flush=True)
        if kept is not None:  # finished, not yet copied: a crash in between, or `results:` added since
            publish(matrix, cell, seed, commit)
        return "skipped"
    resume = run_resume.checkpoint_to_resume(d) if cell.fit and d.exists() else None
    if d.exists() and resume is None and not (cell.fit and run_resume.fit_finished(d)):
        print(f"{tag} unfinished run found: removing {d} and starting over", flush=True)
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "validate", ignore_errors=True)  # a validate that was cut short is redone whole
    head, t0 = archive.head_commit(), time.perf_counter()
    ckpt, fit_cmd, fit_seconds = None, None, None
    if cell.fit:
        fit_cmd = fit_command(matrix, cell, seed)
        if not run_resume.fit_finished(d):
            if resume is not None:
                run_resume.set_aside_logs(d)
            k = run_resume.start_attempt(d)
            log = d / ("fit.log" if k == 0 else f"fit.resume{k}.log")
            how = f"resumed from {resume}" if resume is not None else "fit"
            print(f"{tag} {how} (log: {log})", flush=True)
            if _run(fit_cmd + (["--ckpt_path", str(resume)] if resume is not None else []), log) != 0:
                print(f"{tag} FAILED in fit:\n{_tail(log)}", flush=True)
                return "failed"
            run_resume.merge_logs(d)
            run_resume.end_attempt(d)
        fit_seconds = run_resume.fit_seconds(d)
        ckpt = newest_checkpoint(d)
        if ckpt is None:  # Lightning saves nothing when no optimizer step happened (e.g. every turn skipped)
            print(
                f"{tag} no checkpoint (no optimizer step was taken): validating the initial student",
                flush=True,
            )
    print(f"{tag} validate{' ' + ckpt.name if ckpt else ''} (log: {d / 'validate.log'})", flush=True)
    t1, val_cmd = time.perf_counter(), validate_command(matrix, cell, seed, ckpt)
    rc = _run(val_cmd, d / "validate.log")
    result = d / "validate" / DONE_FILE
    if rc != 0 or not result.is_file():
        print(f"{tag} FAILED in validate (rc={rc}):\n{_tail(d / 'validate.log')}", flush=True)
        return "failed"
    if not complete(json.loads(result.read_text())):  # games lost to the environment: no result of this cell
        print(f"{tag} FAILED in validate: its evaluation is incomplete (games lost to the environment; "
              f"{result}):\n{_tail(d / 'validate.log')}", flush=True)
        return "failed"
    archive.write_run_info(d, fit_seconds, time.perf_counter() - t1, fit_cmd and recorded(fit_cmd),
                           recorded(val_cmd), head)
    write_atomic(d / DONE_FILE, result.read_bytes())
    print(f"{tag} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if kept is not None:
        publish(matrix, cell, seed, commit)
    return "ok"


def publish(matrix: Matrix, cell: Cell, seed: int, commit: bool) -> None:
    """Copy a finished run into the results folder and re-render the tables and plots there, so that they
    are always current; with `commit`, commit exactly those files (a git failure is one line, no stop)."""
    from sage.study.results import run_seconds

    tag, dest = f"[{cell.name}/seed_{seed}]", archive.seed_folder(matrix.results, cell.name, seed)
    files = archive.archive_run(run_dir(matrix, cell, seed), dest)
    outputs = finish(matrix, matrix.cells, quiet=True)
    print(f"{tag} copied to {dest}; tables and plots re-rendered in {matrix.results}", flush=True)
    if commit:
        wall = run_seconds(json.loads((dest / archive.RUN_INFO).read_text()))
        seconds = "?" if wall is None else f"{wall:.0f}"
        message = f"results/{matrix.name}: {cell.name} seed {seed} ({seconds} s)"
        error = archive.commit(files + outputs, message)
        said = f"committed: {message}" if error is None else f"not committed: {error}"
        print(f"{tag} {said}", flush=True)


def finish(matrix: Matrix, cells: list[Cell], quiet: bool = False) -> list[Path]:
    """Tables and plots over the matrix's cells (all of them, not only those run now), from and into the
    results folder when the matrix has one, else its output; returns the files written."""
    from sage.study.paired import write_paired
    from sage.study.plots import make_plots
    from sage.study.results import write_results

    root = matrix.output if matrix.results is None else matrix.results
    names = [c.name for c in cells]
    labels = {c.name: c.label or c.name for c in cells}
    write_results(root, names, labels, baseline=matrix.baseline, title=f"Results: {matrix.name}")
    paired = write_paired(root, names, labels, matrix.baseline, matrix.contrasts)
    fitted = [c.name for c in cells if c.fit]
    pngs = make_plots(root, names, labels, fitted=fitted, start_cell=matrix.start_cell)
    tables = [root / "results.md", root / "results.csv", root / "epochs.csv", *([paired] if paired else [])]
    if not quiet:
        print(f"wrote {', '.join(str(t) if i == 0 else t.name for i, t in enumerate(tables))} and {len(pngs)} plots:",
              flush=True)
        for p in pngs:
            print(f"  {p}", flush=True)
    return [*tables, *pngs]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="sage experiment",
        description=__doc__.split("\n\n")[0],
        epilog="Matrix keys (sage.study.matrix): cells, name, output, seeds, common_args, validate_args (final "
        "validate only), baseline, contrasts (cell -> cells paired with it in paired.md), start_cell (learning "
        "curves' x=0), results (a folder for the committed "
        "copies of finished runs; a run found there is done even when runs/ is gone).",
    )
    p.add_argument("--matrix", required=True, help="matrix YAML, e.g. configs/experiments/cpu_small.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--only", nargs="+", metavar="CELL", help="run only these cells, in this order (tables still cover all)"
    )
    p.add_argument("--seeds", nargs="+", type=int, help="override the matrix's seeds")
    p.add_argument("--output", help="override the matrix's output dir")
    p.add_argument(
        "--aggregate-only",
        action="store_true",
        help="only rebuild tables and plots (from the matrix's `results:` folder when it has one: "
        "no runs/ needed)",
    )
    p.add_argument(
        "--commit",
        action="store_true",
        help="after each finished run, git-commit exactly its files in the `results:` folder and the "
        "re-rendered tables and plots (nothing else); a git failure prints one line and the matrix goes on",
    )
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    """The CLI without exiting: returns 0, or 1 when any run failed."""
    a = parse_args(argv)
    if a.seeds and min(a.seeds) < 0:
        raise UsageError(f"sage experiment: --seeds={a.seeds} must be integers >= 0")
    matrix = load_matrix(a.matrix)
    if a.output:
        matrix.output = Path(a.output)
    check_writable_dir("--output" if a.output else "the matrix's output", matrix.output)
    check_writable_dir("the matrix's results", matrix.results)
    if a.commit and matrix.results is None:
        raise UsageError(
            f"sage experiment: --commit needs a `results:` folder in {a.matrix} (e.g. results/cpu_v2)"
        )
    if a.seeds:  # also replaces the cells' own seed lists
        matrix.seeds = a.seeds
        for cell in matrix.cells:
            cell.seeds = None
    names = [c.name for c in matrix.cells]
    unknown = sorted(set(a.only or []) - set(names))
    if unknown:
        raise UsageError(f"sage experiment: unknown cell(s) {unknown} in --only; the matrix has {names}")
    by_name = {c.name: c for c in matrix.cells}
    todo = [by_name[n] for n in dict.fromkeys(a.only)] if a.only else matrix.cells  # in the order given
    if a.dry_run:
        for cell in todo:
            for seed in cell_seeds(matrix, cell):
                if cell.fit:
                    print(shlex.join(fit_command(matrix, cell, seed)))
                print(
                    shlex.join(
                        validate_command(matrix, cell, seed, Path("<newest ckpt>") if cell.fit else None)
                    )
                )
        return 0
    failed = []
    if not a.aggregate_only:
        t0 = time.perf_counter()
        for cell in todo:
            for seed in cell_seeds(matrix, cell):
                if run_one(matrix, cell, seed, a.commit) == "failed":
                    failed.append(f"{cell.name}/seed_{seed}")
        n = sum(len(cell_seeds(matrix, c)) for c in todo)
        print(
            f"matrix {matrix.name}: {n} runs of {len(todo)} cells in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    finish(matrix, matrix.cells)
    if failed:
        print(f"FAILED runs ({len(failed)}): {', '.join(failed)}", flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    code = run(sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)
