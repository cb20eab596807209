"""`sage experiment`: run a method x ablation x seed matrix of `sage fit` / `sage validate` subprocesses,
then aggregate the results (`sage.results`) and draw the plots (`sage.plots`).

    sage experiment --matrix configs/experiments/cpu_small.yaml [--dry-run] [--only CELL ...]
                    [--seeds S ...] [--output DIR] [--aggregate-only]

Each cell x seed is a fresh process (nothing leaks between runs) logging into
`<output>/runs/<cell>/seed_<S>/` (fit) and its `validate/` subfolder (a second CSVLogger there would
otherwise delete the fit's metrics.csv). The run's `eval_results.json` is copied up into the run dir
last, so its presence marks a finished run: reruns skip it, anything else is redone from scratch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sage.errors import ArgumentParser, InputError, UsageError
from sage.io import write_atomic
from sage.paths import check_writable_dir

DONE_FILE = "eval_results.json"


@dataclass
class Cell:
    """One method or ablation: configs passed as repeated --config, extra CLI overrides, and whether
    to train (False: evaluate the initial student only, e.g. zero-shot or the teacher itself)."""

    name: str
    configs: list[str]
    args: list[str] = field(default_factory=list)
    fit: bool = True
    label: str | None = None
    seeds: list[int] | None = None  # overrides the matrix's seeds (a deterministic baseline needs one)


@dataclass
class Matrix:
    name: str
    output: Path
    seeds: list[int]
    cells: list[Cell]
    common_args: list[str] = field(default_factory=list)  # before each cell's args, so cells override them
    baseline: str = "opd"  # the cell the relative changes refer to


def cli_args(args) -> list[str]:
    """Overrides from YAML: a list of CLI tokens, or a mapping `dotted.key: value` -> `--dotted.key value`
    (None -> null, bools lower-case, lists as `[a,b]`)."""
    if args is None:
        return []
    if isinstance(args, list):
        return [str(a) for a in args]
    out = []
    for key, value in args.items():
        out += [f"--{key}", _cli_value(value)]
    return out


def _cli_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cli_value(v) for v in value) + "]"
    return str(value)


class MatrixError(InputError, ValueError):
    """A --matrix file that is missing, unreadable or not a matrix."""


def _read_matrix(path: str | Path) -> dict:
    """The matrix YAML as a mapping with a ``cells`` mapping, or one `MatrixError` line saying why not."""
    p = Path(path)
    if not p.is_file():
        raise MatrixError(f"--matrix={str(path)!r}: no such file (e.g. configs/experiments/cpu_small.yaml)")
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise MatrixError(f"--matrix={str(path)!r} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise MatrixError(f"--matrix={str(path)!r} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), dict) or not raw["cells"]:
        raise MatrixError(f"--matrix={str(path)!r} is not a matrix: it needs a `cells:` mapping of cell name -> "
                          "{configs, args, fit, seeds} (see configs/experiments/cpu_small.yaml)")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(x, int) and x >= 0 for x in seeds):
        raise MatrixError(f"--matrix={str(path)!r}: seeds={seeds!r} must be a list of integers >= 0")
    return raw


def load_matrix(path: str | Path) -> Matrix:
    raw = _read_matrix(path)
    cells = []
    for name, spec in raw["cells"].items():
        spec = spec or {}
        configs = spec.get("configs") or []
        seeds = spec.get("seeds")
        cells.append(
            Cell(
                name,
                [configs] if isinstance(configs, str) else list(configs),
                cli_args(spec.get("args")),
                bool(spec.get("fit", True)),
                spec.get("label"),
                None if seeds is None else [int(x) for x in seeds],
            )
        )
    return Matrix(
        name=raw.get("name", Path(path).stem),
        output=Path(raw.get("output", f"runs/experiments/{Path(path).stem}")),
        seeds=[int(s) for s in raw.get("seeds", [0])],
        cells=cells,
        common_args=cli_args(raw.get("common_args")),
        baseline=raw.get("baseline", "opd"),
    )


# -- commands -----------------------------------------------------------------------------------------
def sage_command() -> list[str]:
    """This interpreter's `sage` entry point (the venv the experiment itself runs in)."""
    return [sys.executable, "-m", "sage.cli"]


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
    cmd = [*sage_command(), "validate", *_base(matrix, cell, seed), *_logger(d.parent, d.name, "validate")]
    return cmd + (["--ckpt_path", str(ckpt)] if ckpt else [])


def newest_checkpoint(d: Path) -> Path | None:
    """`last.ckpt` when the run saved one, else the most recently written checkpoint."""
    if (d / "checkpoints" / "last.ckpt").is_file():
        return d / "checkpoints" / "last.ckpt"
    ckpts = sorted((d / "checkpoints").glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return ckpts[-1] if ckpts else None


# -- running ------------------------------------------------------------------------------------------
def _run(cmd: list[str], log: Path) -> int:
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode


def _tail(log: Path, n: int = 15) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def run_one(matrix: Matrix, cell: Cell, seed: int) -> str:
    """Fit (if the cell trains) then validate one cell x seed; returns "skipped", "ok" or "failed"."""
    d, tag = run_dir(matrix, cell, seed), f"[{cell.name}/seed_{seed}]"
    if (d / DONE_FILE).is_file():
        print(f"{tag} skipped: {d / DONE_FILE} exists", flush=True)
        return "skipped"
    if d.exists():
        print(f"{tag} unfinished run found: removing {d} and starting over", flush=True)
        shutil.rmtree(d)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    ckpt = None
    if cell.fit:
        print(f"{tag} fit (log: {d / 'fit.log'})", flush=True)
        if _run(fit_command(matrix, cell, seed), d / "fit.log") != 0:
            print(f"{tag} FAILED in fit:\n{_tail(d / 'fit.log')}", flush=True)
            return "failed"
        ckpt = newest_checkpoint(d)
        if ckpt is None:  # Lightning saves nothing when no optimizer step happened (e.g. every turn skipped)
            print(
                f"{tag} no checkpoint (no optimizer step was taken): validating the initial student",
                flush=True,
            )
    print(f"{tag} validate{' ' + ckpt.name if ckpt else ''} (log: {d / 'validate.log'})", flush=True)
    rc = _run(validate_command(matrix, cell, seed, ckpt), d / "validate.log")
    result = d / "validate" / DONE_FILE
    if rc != 0 or not result.is_file():
        print(f"{tag} FAILED in validate (rc={rc}):\n{_tail(d / 'validate.log')}", flush=True)
        return "failed"
    write_atomic(d / DONE_FILE, result.read_bytes())
    print(f"{tag} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return "ok"


def finish(matrix: Matrix, cells: list[Cell]) -> None:
    """Tables and plots over the matrix's cells (all of them, not only those run now)."""
    from sage.plots import make_plots
    from sage.results import write_results

    names = [c.name for c in cells]
    labels = {c.name: c.label or c.name for c in cells}
    write_results(matrix.output, names, labels, baseline=matrix.baseline, title=f"Results: {matrix.name}")
    pngs = make_plots(matrix.output, names, labels, fitted=[c.name for c in cells if c.fit])
    print(f"wrote {matrix.output / 'results.md'}, results.csv, epochs.csv and {len(pngs)} plots:", flush=True)
    for p in pngs:
        print(f"  {p}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="sage experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--matrix", required=True, help="matrix YAML, e.g. configs/experiments/cpu_small.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--only", nargs="+", metavar="CELL", help="run only these cells, in this order (tables still cover all)"
    )
    p.add_argument("--seeds", nargs="+", type=int, help="override the matrix's seeds")
    p.add_argument("--output", help="override the matrix's output dir")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild tables and plots")
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
                if run_one(matrix, cell, seed) == "failed":
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
