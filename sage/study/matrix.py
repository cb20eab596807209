"""The matrix file of `sage experiment`: cells (methods and ablations) x seeds, and how the runs of them are
driven and kept.

Keys: `cells` (name -> {configs, args, fit, label, seeds, validate_args}), `name`, `output` (the run
dirs), `seeds`, `common_args` (before each cell's args, so cells override them), `validate_args` (after
the cell's args, on the final `sage validate` only: e.g. `data.val_games: null` for the full panels
while fit's periodic validations use half panels; a cell may add its own), `baseline` (the cell relative
changes refer to), `contrasts` (cell -> other cells it is compared with game by game in `paired.md`, besides
the baseline: e.g. the full method minus each of its ablations), `start_cell` (an evaluation-only cell,
every learning curve's x=0: `sage.study.curves`) and `results` (a folder relative to the cwd for the committed
copies of finished runs: `sage.study.archive`). Args are a list of CLI tokens or a mapping `dotted.key: value`.
`anchors` may hold YAML anchors the cells share (not read). Any other key, at the top or in a cell, is
refused with the allowed ones.
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
    results: Path | None = None  # the committed copies of finished runs (`sage.study.archive`); None: none
    start_cell: str | None = None  # the evaluation-only cell every learning curve starts from (x=0)
    contrasts: dict[str, list[str]] = field(default_factory=dict)  # cell -> cells it is paired with (paired.md)


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


KEYS = ("name", "output", "seeds", "cells", "common_args", "validate_args", "baseline", "contrasts", "start_cell",
        "results", "anchors")  # anchors: YAML anchors the cells share, not read
CELL_KEYS = ("configs", "args", "fit", "label", "seeds", "validate_args")


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
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise MatrixError(f"--matrix={str(path)!r}: unknown key {unknown[0]!r}; allowed: {', '.join(KEYS)}")
    for name, spec in raw["cells"].items():
        if spec is not None and not isinstance(spec, dict):
            raise MatrixError(f"--matrix={str(path)!r}: cell {name!r} must be a mapping of {', '.join(CELL_KEYS)}")
        bad = [k for k in (spec or {}) if k not in CELL_KEYS]
        if bad:
            raise MatrixError(f"--matrix={str(path)!r}: cell {name!r} has unknown key {bad[0]!r}; "
                              f"allowed: {', '.join(CELL_KEYS)}")
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
    for key in ("start_cell", "baseline"):
        if raw.get(key) is not None and raw[key] not in raw["cells"]:
            raise MatrixError(f"--matrix={str(path)!r}: {key}={raw[key]!r} is not one of its cells {list(raw['cells'])}")
    contrasts = _contrasts(path, raw)
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
        contrasts=contrasts,
    )


def _contrasts(path: str | Path, raw: dict) -> dict[str, list[str]]:
    """``contrasts``: a mapping cell -> list of other cells, every name one of the matrix's cells."""
    value = raw.get("contrasts") or {}
    names = list(raw["cells"])
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise MatrixError(f"--matrix={str(path)!r}: contrasts={value!r} must map a cell to a list of cells, "
                          "e.g. {sage_opd: [sage_no_gate, sage_no_norm]}")
    for cell, others in value.items():
        for name in [cell, *others]:
            if name not in names:
                raise MatrixError(f"--matrix={str(path)!r}: contrasts names {name!r}, not one of its cells {names}")
        if cell in others:
            raise MatrixError(f"--matrix={str(path)!r}: contrasts pairs {cell!r} with itself")
    return {str(c): [str(o) for o in others] for c, others in value.items()}
