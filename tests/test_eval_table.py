"""The printed evaluation table: a measured 0.0 is shown, only a missing figure is "-"."""

from callbacks.evaluation import format_table


def test_a_zero_rate_prints_as_zero_and_a_missing_one_as_a_dash():
    results = {"seen": {"overall": 0.0}}
    counts = {"seen": {"overall": 3}}
    rates = {"seen": {"turns": 18, "admissible_rate": 0.0, "format_rate": None}}
    rows = {line[:34].strip(): line[34:].split() for line in format_table(results, counts, rates).splitlines()}
    assert rows["overall"] == ["0.0", "3"]
    assert rows["admissible actions (turns)"] == ["0.0", "18"]
    assert rows["parsed answers (turns)"] == ["-", "18"]
