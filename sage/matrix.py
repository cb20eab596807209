"""The matrix file of `sage experiment`: cells (methods and ablations) x seeds, and how the runs of them are
driven and kept.

Keys: `cells` (name -> {configs, args, fit, label, seeds, validate_args}), `name`, `output` (the run
dirs), `seeds`, `common_args` (before each cell's args, so cells override them), `validate_args` (after
the cell's args, on the final `sage validate` only: e.g. `data.val_games: null` for the full panels
while fit's periodic validations use half panels; a cell may add its own), `baseline` (the cell relative
changes refer to), `start_cell` (an evaluation-only cell, every learning curve's x=0: `sage.curves`) and
`results` (a folder relative to the cwd for the committed copies of finished runs: `sage.archive`).
Args are a list of CLI tokens or a mapping `dotted.key: value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sage.errors import InputError


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
    validate_args: list[str] = field(default_factory=list)  # the final `sage validate` only


@dataclass
class Matrix:
    name: str
    output: Path
    seeds: list[int]
    cells: list[Cell]
    common_args: list[str] = field(default_factory=list)  # before each cell's args, so cells override them
    baseline: str = "opd"  # the cell the relative changes refer to
    validate_args: list[str] = field(default_factory=list)  # after the cell's args, final validate only
    results: Path | None = None  # the committed copies of finished runs (`sage.archive`); None: none
    start_cell: str | None = None  # the evaluation-only cell every learning curve starts from (x=0)


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
                cli_args(spec.get("validate_args")),
            )
        )
    start = raw.get("start_cell")
    if start is not None and start not in raw["cells"]:
        raise MatrixError(
            f"--matrix={str(path)!r}: start_cell={start!r} is not one of its cells {list(raw['cells'])}"
        )
    return Matrix(
        name=raw.get("name", Path(path).stem),
        output=Path(raw.get("output", f"runs/experiments/{Path(path).stem}")),
        seeds=[int(s) for s in raw.get("seeds", [0])],
        cells=cells,
        common_args=cli_args(raw.get("common_args")),
        baseline=raw.get("baseline", "opd"),
        validate_args=cli_args(raw.get("validate_args")),
        results=None if raw.get("results") is None else Path(raw["results"]),
        start_cell=start,
    )
