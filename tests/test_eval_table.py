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


def test_no_figure_over_zero_played_turns_and_the_lost_games_are_said():
    """The issue's run: every worker died, 3 games asked, none played. The old table printed 0.0 % over them."""
    results = {"seen": {"overall": 0.0, "pick_and_place_simple": 0.0}}
    counts = {"seen": {"overall": 3, "pick_and_place_simple": 3}}
    rates = {"seen": {"turns": 0, "admissible_rate": None, "format_rate": None}}
    episodes = {"seen": {"asked": 3, "played": 0, "lost": 3}}
    table = format_table(results, counts, rates, episodes)
    rows = {line[:34].strip(): line[34:].split() for line in table.splitlines()}
    assert rows["overall"] == ["-", "0"] and rows["pick_and_place_simple"] == ["-", "0"]
    assert rows["LOST to the environment (games)"] == ["3", "3"] and "INCOMPLETE" in table
