"""The matrix runner: commands, resumability and failure handling with a fake `sage` (fast), then one
real tiny 2-cell matrix end to end (slow: ~1-2 min on 2 idle cores, most of it process start-up and
game loading)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from sage import experiment
from sage.errors import UsageError
from sage.experiment import cli_args, fit_command, load_matrix, run, validate_command

ROOT = Path(__file__).resolve().parents[1]

# Stands in for `python -m sage.cli`: writes what fit/validate would write into the logger's dir,
# records its argv, and fails when the run's cell is named in $FAKE_FAIL.
FAKE_SAGE = """
import json, os, sys
argv = sys.argv[1:]
arg = lambda k: argv[argv.index(k) + 1] if k in argv else None
p = "--trainer.logger.init_args."
d = os.path.join(arg(p + "save_dir"), arg(p + "name"), arg(p + "version"))
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, argv[0] + "_argv.json"), "w") as f:
    json.dump(argv, f)
if any(c in d for c in os.environ.get("FAKE_FAIL", "?").split(",")):
    sys.exit(3)
if argv[0] == "fit":
    os.makedirs(os.path.join(d, "checkpoints"))
    open(os.path.join(d, "checkpoints", "last.ckpt"), "w").close()
else:
    s = float(arg("--seed_everything")) / 4
    res = {"success": {"seen": {"overall": s}, "unseen": {"overall": s / 2}}}
    with open(os.path.join(d, "eval_results.json"), "w") as f:
        json.dump(res, f)
"""

MATRIX = """
name: fake
output: {out}
seeds: [1, 2]
common_args: {{data.val_games: 1, data.val_splits: [valid_seen, valid_unseen], model.teacher: null}}
cells:
  zero_shot: {{configs: [configs/sft.yaml], fit: false, label: zero-shot student}}
  opd: {{configs: [configs/opd.yaml], args: [--trainer.max_epochs, "1"]}}
  sage_no_gate:
    configs: [configs/sage_opd.yaml, configs/ablations/no_gate.yaml]
    args: {{trainer.max_epochs: 2}}
    seeds: [2]
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_sage.py"
    script.write_text(FAKE_SAGE)
    monkeypatch.setattr(experiment, "sage_command", lambda: [sys.executable, str(script)])
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX.format(out=tmp_path / "out"))
    return path


def test_cli_args_from_mapping_and_list():
    assert cli_args({"a.b": None, "c": True, "d": [1, "x"], "e": 0.5}) == [
        "--a.b",
        "null",
        "--c",
        "true",
        "--d",
        "[1,x]",
        "--e",
        "0.5",
    ]
    assert cli_args(["--x", 1]) == ["--x", "1"] and cli_args(None) == []


def test_commands(fake):
    m = load_matrix(fake)
    assert [c.name for c in m.cells] == ["zero_shot", "opd", "sage_no_gate"] and m.seeds == [1, 2]
    assert m.cells[2].seeds == [2] and m.cells[0].seeds is None and m.cells[0].label == "zero-shot student"
    cell = m.cells[2]
    cmd = fit_command(m, cell, 2)
    assert cmd[cmd.index("fit") + 1 :][:4] == [
        "--config",
        "configs/sage_opd.yaml",
        "--config",
        "configs/ablations/no_gate.yaml",
    ]
    tail = " ".join(cmd)
    assert "--data.val_splits [valid_seen,valid_unseen] --model.teacher null --trainer.max_epochs 2" in tail
    assert "--seed_everything 2 --data.seed 2" in tail
    p = "--trainer.logger.init_args."
    assert cmd[cmd.index(p + "save_dir") + 1] == str(m.output / "runs")
    assert (cmd[cmd.index(p + "name") + 1], cmd[-1]) == ("sage_no_gate", "seed_2")
    v = validate_command(m, cell, 2, Path("x.ckpt"))
    assert v[v.index(p + "save_dir") + 1] == str(m.output / "runs" / "sage_no_gate")
    assert v[-4:] == [p + "version", "validate", "--ckpt_path", "x.ckpt"]
    assert "--ckpt_path" not in validate_command(m, m.cells[0], 1, None)


def test_dry_run_and_unknown_cell(fake, capsys):
    assert run(["--matrix", str(fake), "--dry-run", "--only", "zero_shot"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(" validate " in line for line in lines)  # fit: false -> no fit
    assert run(["--matrix", str(fake), "--dry-run", "--only", "sage_no_gate", "zero_shot"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()  # run in the order given, not the matrix's
    assert ["sage_no_gate" in lines[0], "zero_shot" in lines[-1], len(lines)] == [True, True, 4]
    with pytest.raises(UsageError, match="unknown cell"):
        run(["--matrix", str(fake), "--only", "nope"])


def test_runs_resumes_and_reports_failures(fake, capsys, monkeypatch):
    out = fake.parent / "out"
    monkeypatch.setenv("FAKE_FAIL", "opd/seed_2")
    assert run(["--matrix", str(fake)]) == 1  # one failed run, the others still ran
    log = capsys.readouterr().out
    assert "[opd/seed_2] FAILED in fit" in log and "FAILED runs (1): opd/seed_2" in log
    runs = out / "runs"
    done = sorted(str(p.relative_to(runs)) for p in runs.glob("*/seed_*/eval_results.json"))
    assert done == [
        "opd/seed_1/eval_results.json",
        "sage_no_gate/seed_2/eval_results.json",
        "zero_shot/seed_1/eval_results.json",
        "zero_shot/seed_2/eval_results.json",
    ]
    argv = json.loads((runs / "opd/seed_1/validate/validate_argv.json").read_text())
    assert argv[-2:] == ["--ckpt_path", str(runs / "opd/seed_1/checkpoints/last.ckpt")]
    assert not (runs / "zero_shot/seed_1/fit_argv.json").exists()
    assert "| zero-shot student | 2 | 37.5 ± 17.7 |" in (out / "results.md").read_text()

    stamp = (runs / "opd/seed_1/eval_results.json").stat().st_mtime_ns
    (runs / "opd/seed_2/stray.txt").write_text("half-finished")
    monkeypatch.delenv("FAKE_FAIL")
    assert run(["--matrix", str(fake), "--only", "opd"]) == 0
    log = capsys.readouterr().out
    assert "[opd/seed_1] skipped" in log and "[opd/seed_2] unfinished run found" in log
    assert (runs / "opd/seed_1/eval_results.json").stat().st_mtime_ns == stamp
    assert not (runs / "opd/seed_2/stray.txt").exists() and (runs / "opd/seed_2/eval_results.json").exists()
    with pytest.raises(UsageError):
        experiment.main(["--matrix", str(fake), "--only", "nope"])


@pytest.mark.slow
def test_tiny_matrix_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the matrix names configs relative to the repository root
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = ["--matrix", "configs/experiments/tiny_test.yaml", "--output", str(out)]
    t0 = time.perf_counter()
    assert run(args) == 0, capsys.readouterr().out
    elapsed = time.perf_counter() - t0
    runs = out / "runs"
    for cell in ("zero_shot_student", "opd"):
        res = json.loads((runs / cell / "seed_0" / "eval_results.json").read_text())
        assert res["games"]["seen"]["overall"] == 1 and res["games"]["unseen"]["overall"] == 1
    assert (runs / "opd/seed_0/val_history.jsonl").is_file() and (runs / "opd/seed_0/metrics.csv").is_file()
    assert list((runs / "opd/seed_0/episodes").glob("epoch_*.jsonl"))
    md = (out / "results.md").read_text()
    assert "| zero-shot student | 1 |" in md and "| OPD | 1 |" in md
    assert (out / "results.csv").is_file() and (out / "epochs.csv").is_file()
    pngs = {p.name for p in out.glob("*.png")}
    assert {"success_vs_epoch.png", "final_metrics.png", "episode_opd_seed0_epoch_000.png"} <= pngs
    assert "gate_vs_epoch.png" not in pngs  # OPD has no gate or confidence to plot
    capsys.readouterr()

    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/seed_0/eval_results.json")}
    t1 = time.perf_counter()
    assert run(args) == 0
    log = capsys.readouterr().out
    assert "[zero_shot_student/seed_0] skipped" in log and "[opd/seed_0] skipped" in log
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert time.perf_counter() - t1 < 30
    print(f"tiny matrix: {elapsed:.0f} s")


@pytest.mark.parametrize("name", ["cpu_small", "tiny_test"])
def test_matrix_cells_parse(name, monkeypatch, capsys):
    """Every cell's command line parses with the real CLI (`--print_config`: no model is loaded)."""
    from sage.cli import cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["sage"])  # LightningCLI warns when it sees pytest's own argv
    m = load_matrix(ROOT / "configs" / "experiments" / f"{name}.yaml")
    for cell in m.cells:
        cmd = fit_command(m, cell, 0) if cell.fit else validate_command(m, cell, 0, None)
        with pytest.raises(SystemExit) as stop:
            cli(cmd[len(experiment.sage_command()) :] + ["--print_config"])
        assert stop.value.code in (0, None)
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert cfg["seed_everything"] == 0 and cfg["data"]["seed"] == 0
        assert cfg["trainer"]["logger"]["init_args"]["version"] == ("seed_0" if cell.fit else "validate")
        if cell.name.startswith("teacher"):  # the whole 30-layer model, before or after its SFT
            assert cfg["model"]["student"]["num_layers"] is None
        if cell.name.startswith("sage_no_"):  # the overlay sets the part's spec itself: config.yaml says what ran
            part = cell.name.removeprefix("sage_no_")
            m_cfg = cfg["model"]
            assert {"gate": m_cfg["gate"]["mode"] == "always", "confidence": m_cfg["confidence"]["kind"] == "none",
                    "norm": m_cfg["loss"]["normalize"] == "opd"}[part]
    if name == "cpu_small":
        assert [c.name for c in m.cells] == [
            "zero_shot_student",
            "student_init",
            "teacher_zero_shot",
            "teacher",
            "sft",
            "opd",
            "gkd_jsd",
            "sage_opd",
            "sage_no_gate",
            "sage_no_confidence",
            "sage_no_norm",
        ]
        assert m.seeds == [0, 1, 2]


def test_newest_checkpoint(tmp_path):
    from sage.experiment import newest_checkpoint

    assert newest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    for i, name in enumerate(["epoch=1-step=4.ckpt", "epoch=0-step=2.ckpt"]):
        (tmp_path / "checkpoints" / name).touch()
        os.utime(tmp_path / "checkpoints" / name, ns=(i, i))
    assert newest_checkpoint(tmp_path).name == "epoch=0-step=2.ckpt"  # written last
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    os.utime(tmp_path / "checkpoints" / "last.ckpt", ns=(0, 0))
    assert newest_checkpoint(tmp_path).name == "last.ckpt"
