"""Progress in a log file: a long phase says it is alive every `LOG_EVERY_S`, then its one summary line."""

from __future__ import annotations

import pytest

from sage import progress
from sage.progress import Phase


@pytest.fixture(autouse=True)
def log_file(monkeypatch):
    monkeypatch.setenv("SAGE_PROGRESS", "0")  # as when stdout is a log file: no bar


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_a_long_phase_prints_its_progress_between_summaries(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # every update is "long"
    with Phase("eval valid_seen", total=3, unit="turn") as phase:
        phase.update(1, games=2)
        phase.update(0.5)  # the judge counts a turn in parts
        phase.update(1.5)
        phase.close("3 turns")
    lines = _lines(capsys)
    assert [ln.rsplit(" (", 1)[0] for ln in lines] == [
        "[eval valid_seen] 1/3 turns so far, games=2",
        "[eval valid_seen] 2/3 turns so far",  # 1.5 rounds to 2
        "[eval valid_seen] 3/3 turns so far",
        "[eval valid_seen] 3 turns",
    ]


def test_a_short_phase_prints_only_its_summary(capsys):
    with Phase("teacher", total=None, unit="seq") as phase:
        for _ in range(5):
            phase.update(1)
        phase.close("5 sequences")
    lines = _lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("[teacher] 5 sequences (")
