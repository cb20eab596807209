"""Environment faults with the real engine: no run reports a result from episodes it did not play.

Each case runs `sage` (in this process through `sage.cli.main`, tiny models, real ALFWorld workers on the
bundled games) with a real fault: every worker failing at start-up ($ALFWORLD_DATA naming a folder alfworld
cannot make), a worker killed with SIGKILL in the middle of a rollout, and a worker whose `step` raises
(`tests.faults.Explosive`). Each checks the exit code, the line printed and what was written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import sage.rollout.loop
from sage import records_io
from sage.cli import main
from sage.envs import EnvPool, bundled_root, find_games
from tests.faults import Explosive

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "/etc/hostname/alfworld"  # below a file: alfworld cannot create it at import, even as root


def args(out: Path, command: str = "fit", *extra: str) -> list[str]:
    return [command, "--config", str(ROOT / "configs/opd.yaml"),
            "--model.student.name_or_path", "tiny-random", "--model.student.num_layers", "2",
            "--model.teacher.name_or_path", "tiny-random", "--model.teacher.seed", "1",
            "--data.train_games", "4", "--data.max_turns", "3", "--data.val_games", "2", "--data.env_workers", "2",
            "--data.val_splits", "[valid_seen]", "--data.rollout.max_new_tokens", "8", "--data.samples_per_step", "4",
            "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "100", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", *extra, "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.version", "v"]


def run(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`sage <argv>` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sage", *argv])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    print(f"$ sage {argv[0]} ... -> exit {code}\n{out[-2000:]}\n{err[-2000:]}")  # shown with -s
    assert "Traceback" not in err, err[-3000:]
    return code, out, err


def kill_a_worker_at_step(monkeypatch, call: int) -> list[int]:
    """SIGKILL the worker playing slot 0 just before the pool's ``call``-th step (the real process dies)."""
    real, calls, killed = EnvPool.step, [], []

    def step(self, actions):
        calls.append(1)
        if len(calls) == call:
            killed.append(self.worker_pid(0))
            os.kill(killed[0], signal.SIGKILL)
        return real(self, actions)

    monkeypatch.setattr(EnvPool, "step", step)
    return killed


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_every_worker_failing_at_startup_stops_before_any_model_loads(tmp_path, monkeypatch, capsys, command):
    import sage.models

    monkeypatch.setenv("ALFWORLD_DATA", BROKEN)
    monkeypatch.setattr(sage.models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    code, out, err = run(args(tmp_path, command, "--data.data_root", str(bundled_root())), monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("sage: error: the ALFWorld environment does not start: resetting game ")
    assert f"the ALFWorld engine failed at import: NotADirectoryError: [Errno 20] Not a directory: {BROKEN!r}" in err
    assert f"(data root {str(bundled_root() / 'json_2.1.1')!r}, $ALFWORLD_DATA={BROKEN!r})" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_empty_alfworld_data_counts_as_unset(monkeypatch):
    """What a shell script exporting an unset name gives: alfworld would fail creating the folder ''."""
    monkeypatch.setenv("ALFWORLD_DATA", "")
    with EnvPool(num_workers=1, max_steps=2) as pool:
        (start,) = pool.reset(find_games("train", limit=1))
    assert start.error is None and start.task


@pytest.mark.parametrize("share", [0.5, None], ids=["run_goes_on", "too_many_lost"])
def test_a_worker_killed_mid_rollout(tmp_path, monkeypatch, capsys, share):
    """SIGKILL to one of the two workers at the rollout's second turn: its games are lost (counted and said),
    the other worker's are kept. Losing half of the epoch is within 0.5, so the run trains on the rest; with
    the default (0.25) it stops with exit 3 after writing the played episodes."""
    killed = kill_a_worker_at_step(monkeypatch, call=2)
    extra = ("--data.max_lost_train_share", str(share)) if share is not None else ()
    code, out, err = run(args(tmp_path, "fit", *extra), monkeypatch, capsys)
    run_dir = tmp_path / "opd" / "v"
    _, played = records_io.read_episodes(run_dir / "epoch_data" / "epoch_000.jsonl", "epoch")
    n_lost = 4 - len(played)
    assert 1 <= n_lost < 4 and all(ep.error is None and ep.length for ep in played)
    line = (f"[rollout epoch 0] {n_lost} of 4 episodes lost to the environment (first: ALFWorld worker process "
            f"{killed[0]} died (exit code -9))")
    assert line in out.splitlines()
    if share is not None:
        assert code == 0 and (run_dir / "checkpoints" / "last.ckpt").is_file()
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        assert [float(r["train/episodes_lost"]) for r in rows if r.get("train/episodes_lost")] == [n_lost]
    else:
        assert code == 3 and err.strip() == (
            f"sage: error: the rollout of epoch 0: {n_lost} of 4 episodes were lost to the environment, more than "
            f"data.max_lost_train_share=0.25 allows; the {4 - n_lost} played episodes are in "
            f"{run_dir / 'epoch_data' / 'epoch_000.jsonl'}. Look for the workers' errors above (an environment worker "
            "killed, out of memory, a game the engine cannot step), fix it and run again")
        assert not (run_dir / "checkpoints").exists()


def test_a_worker_that_raises_inside_step_during_evaluation(tmp_path, monkeypatch, capsys):
    """The second game's first action makes its worker raise inside `step`: that game is lost, the other is
    played; the results are written marked incomplete, the table says so, and the run exits 3 (by default
    any lost evaluation game stops it)."""
    real, calls = sage.rollout.loop.parse_action, []

    def parse(text, *a, **k):
        calls.append(1)
        p = real(text, *a, **k)
        return dataclasses.replace(p, action=Explosive(p.action)) if len(calls) == 2 else p

    monkeypatch.setattr(sage.rollout.loop, "parse_action", parse)
    code, out, err = run(args(tmp_path, "validate"), monkeypatch, capsys)
    folder = tmp_path / "opd" / "v"
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["complete"] is False and results["episodes"] == {"seen": {"asked": 2, "lost": 1, "played": 1}}
    assert results["games"]["seen"]["overall"] == 1  # the lost game is in no figure
    games = [json.loads(line) for line in (folder / "eval_games.jsonl").read_text().splitlines()]
    assert [g["error"] is not None for g in games].count(True) == 1
    assert any("injected fault stepping" in (g["error"] or "") for g in games)
    assert "[eval valid_seen] 1 of 2 episodes lost to the environment (first: RuntimeError: injected fault" in out
    assert "LOST to the environment (games)" in out and "INCOMPLETE" in out
    assert code == 3 and err.strip() == (
        "sage: error: the evaluation of split seen: 1 of 2 episodes were lost to the environment, more than "
        f"data.max_lost_eval_share=0 allows; the results over the 1 played games are in {folder / 'eval_results.json'}, "
        "marked incomplete. Look for the workers' errors above (an environment worker killed, out of memory, a game "
        "the engine cannot step), fix it and run again")
