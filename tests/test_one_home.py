"""One home per idea, checked in the source: the gate label names are typed once (`sage.specs.GATE_LABELS`);
everywhere else reads them from there (`SKIP`, `WEAK`, `STRONG`, `INTERVENE`, `THREE_LEVEL`, `TWO_LEVEL`)."""

from __future__ import annotations

import ast
from pathlib import Path

from sage.specs import GATE_LABELS, INTERVENE, SKIP, STRONG, THREE_LEVEL, TWO_LEVEL, WEAK

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "sage" / "specs.py"


def label_literals(path: Path) -> list[int]:
    """Lines of `path` where a gate label is written as a string literal of its own."""
    tree = ast.parse(path.read_text(), str(path))
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in GATE_LABELS)


def test_the_names_come_from_the_table():
    assert tuple(GATE_LABELS) == (SKIP, WEAK, STRONG, INTERVENE)
    assert THREE_LEVEL == ("SKIP", "WEAK", "STRONG") and TWO_LEVEL == ("SKIP", "INTERVENE")


def test_gate_labels_are_typed_only_in_specs():
    typed = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "sage").rglob("*.py"))
             for lines in [label_literals(p)] if lines and p != HOME}
    typed |= {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "callbacks").rglob("*.py"))
              for lines in [label_literals(p)] if lines}
    assert typed == {}


def test_the_check_sees_a_typed_label(tmp_path):
    (tmp_path / "m.py").write_text('"""SKIP in a docstring is prose."""\nx = {"WEAK": 1}\n')
    assert label_literals(tmp_path / "m.py") == [2]
