"""`sage view`: transcript records -> one self-contained HTML file, checked on a real tiny rollout and
in a real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks.episode_log import episode_record, write_jsonl
from sage.distill.gate import make_gate
from sage.distill.teacher import TeacherScorer
from sage.envs import PromptBuilder, find_games
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import rollout
from sage.specs import GateSpec, RolloutSpec
from sage.study.view import build_html, load_run, main
from tests.helpers import tiny_model, tiny_tokenizer

HOSTILE = "a <b>bold</b> & </script><script>document.body.dataset.pwned=1</script> <!-- x"
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


MAX_TURNS, POOL_WORKERS = 3, 1  # the `pool` fixture (conftest.py)


@pytest.fixture(scope="module")
def episodes(pool):
    """Two bundled games played by a tiny random student, judged and scored by a tiny teacher; one
    turn's game text made hostile (the real games have no markup to escape)."""
    tok, student, teacher = tiny_tokenizer(), tiny_model(seed=5), tiny_model(seed=1)
    games = find_games("valid_seen", limit=2)
    eps = rollout(HFGenerator(student, tok, seed=0), pool, games, PromptBuilder(), tok,
                  RolloutSpec(context_mode="window", max_new_tokens=12))
    make_gate(GateSpec(), None, teacher, tok).judge(eps)
    TeacherScorer(teacher).score_turns([t for ep in eps for t in ep.turns if t.gate > 0])
    eps[0].turns[1].observation += HOSTILE
    eps[0].turns[1].feedback = HOSTILE
    eps[1].task = HOSTILE
    return eps, tok


def embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="sage-data">(.*?)</script>', page, re.S)
    assert m, "no data script"
    return json.loads(m.group(1))


def test_records_carry_per_token_data(episodes):
    eps, tok = episodes
    assert any(t.confidence for ep in eps for t in ep.turns), "the teacher scored no turn: nothing to shade"
    rec = episode_record(eps[0], epoch=3, tokenizer=tok)
    assert rec["epoch"] == 3 and len(rec["turns"]) == eps[0].length
    for t, r in zip(eps[0].turns, rec["turns"], strict=True):
        n = len(t.response_ids)
        assert len(r["tokens"]) == len(r["logprob"]) == n
        assert "".join(r["tokens"]) == tok.decode(t.response_ids, skip_special_tokens=False)
        assert r["logprob"] == pytest.approx(t.logprobs, abs=1e-4)
        assert r["observation"] == t.observation and r["admissible"] == t.admissible
        if t.confidence:
            assert len(r["confidence"]) == len(r["teacher_logprob"]) == n
            assert r["confidence"] == pytest.approx(t.confidence, abs=1e-4)
        else:
            assert r["confidence"] is None and r["teacher_logprob"] is None
    assert "tokens" not in episode_record(eps[0], epoch=3)["turns"][0]  # no tokenizer: no pieces
    assert json.loads(json.dumps(rec)) == rec


def test_html_embeds_every_turn_and_escapes_game_text(episodes):
    eps, tok = episodes
    records = [episode_record(ep, 0, tok) for ep in eps]
    page = build_html(records, title="run <x> & y", summary=None)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # game text opened/closed none
    assert "pwned" in page and "pwned=1</script>" not in page and "<!-- x" not in page
    assert "<title>run &lt;x&gt; &amp; y</title>" in page
    assert not re.search(r"https?://", page), "the page must not load anything from the network"
    data = embedded(page)
    assert data["episodes"] == records  # every episode and turn, unchanged
    assert sum(len(e["turns"]) for e in data["episodes"]) == sum(ep.length for ep in eps)
    assert HOSTILE in data["episodes"][0]["turns"][1]["observation"]
    s = data["summary"]["0"]
    assert s["episodes"] == 2 and s["turns"] == sum(ep.length for ep in eps)
    assert sum(s["gate_rates"].values()) == pytest.approx(1.0)
    assert "innerHTML" not in page  # game text goes in with textContent only


def test_old_records_without_per_token_data_still_build(episodes):
    eps, _ = episodes
    old = [episode_record(ep, 0) for ep in eps]
    for rec in old:
        for t in rec["turns"]:
            for key in ("observation", "admissible", "confidence", "logprob", "teacher_logprob"):
                t.pop(key)
    assert embedded(build_html(old, "old"))["episodes"] == old


def test_non_finite_numbers_become_null():
    turn = {"index": 0, "response": "x", "tokens": ["x"], "confidence": [float("nan")], "logprob": [float("-inf")],
            "teacher_logprob": [-1.0], "feedback": "", "action": "", "gate_label": "WEAK", "gate": 0.5}
    rec = {"epoch": 0, "game_id": "g", "task_type": "t", "task": "", "won": False, "turns": [turn]}
    data = re.search(r'id="sage-data">(.*?)</script>', build_html([rec], "nan"), re.S).group(1)
    assert "NaN" not in data and "Infinity" not in data  # JSON.parse would reject the page
    got = json.loads(data)["episodes"][0]["turns"][0]
    assert got["confidence"] == [None] and got["logprob"] == [None] and got["teacher_logprob"] == [-1.0]


def _run_dir(tmp_path, eps, tok):
    run = tmp_path / "run" / "version_0"
    write_jsonl(run / "episodes" / "epoch_000.jsonl", eps[:1], 0, tokenizer=tok)
    write_jsonl(run / "episodes" / "epoch_001.jsonl", eps, 1, tokenizer=tok)
    (run / "metrics.csv").write_text(
        "epoch,step,train/episode_success,train/gate/skip_rate,val/seen/success\n"
        "0,0,,,\n0,1,0.25,0.5,\n0,1,,,0.75\n"
    )
    return run


def test_load_run_reads_epochs_and_metrics(tmp_path, episodes):
    eps, tok = episodes
    run = _run_dir(tmp_path, eps, tok)
    records, summary = load_run(run)
    assert [r["epoch"] for r in records] == [0, 1, 1]
    assert summary[0]["success"] == 0.25 and summary[0]["val_seen_success"] == 0.75
    assert summary[0]["gate_rates"]["SKIP"] == 0.5 and summary[0]["source"] == "metrics.csv"
    assert summary[1]["source"] == "episodes" and summary[1]["turns"] == sum(ep.length for ep in eps)
    records, summary = load_run(run, epoch=1)
    assert len(records) == 2 and list(summary) == [1]
    (run / "episodes" / "epoch_001_rank1.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert len(load_run(run, epoch=1)[0]) == 3  # every rank's file of the epoch
    with pytest.raises(ValueError, match="epochs there"):
        load_run(run, epoch=7)


def test_cli_writes_the_viewer(tmp_path, episodes, capsys):
    eps, tok = episodes
    run = _run_dir(tmp_path, eps, tok)
    out = main([str(run), "--epoch", "1"])
    assert out == run / "viewer_epoch_1.html" and str(out) in capsys.readouterr().out
    assert len(embedded(out.read_text())["episodes"]) == 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not whatever is installed
    proc = subprocess.run([sys.executable, "-m", "sage.cli", "view", str(run), "--out", str(tmp_path / "v.html")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(embedded((tmp_path / "v.html").read_text())["episodes"]) == 3


def chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


# Skipped on a laptop without Chromium; CI (.ci/run) installs it and sets SAGE_NO_SKIP=1, so there a missing
# browser fails the test instead of skipping it.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("SAGE_NO_SKIP"),
                    reason="no Chromium installed (apt-get install chromium) for the browser check")
def test_real_browser_renders_every_turn(tmp_path, episodes):
    assert CHROMIUM, "SAGE_NO_SKIP=1 but no chromium on PATH (apt-get install chromium)"
    eps, tok = episodes
    page = tmp_path / "viewer.html"
    records = [episode_record(ep, 0, tok) for ep in eps]
    page.write_text(build_html(records, "browser check"))
    e, k = next((e, k) for e, ep in enumerate(records) for k, t in enumerate(ep["turns"]) if t["confidence"])
    url = page.as_uri() + f"?all=1&hover={e},{k},1"
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert int(attrs["data-rendered-turns"]) == sum(ep.length for ep in eps)
    assert float(attrs["data-render-all-ms"]) >= 0
    assert dom.count('class="turn"') == sum(ep.length for ep in eps)
    # the hostile text is shown as text: escaped in the serialized DOM, and its script never ran
    assert html.escape("<b>bold</b>", quote=False) in dom and "data-pwned" not in attrs
    n_tokens = sum(len(t.response_ids) for ep in eps for t in ep.turns)
    assert len(re.findall(r'class="tok( special)?"', dom)) == n_tokens
    # hovering token 1 of a scored turn shows its kappa and sampled log-ratio log pi_s - log pi_T
    tip = html.unescape(re.search(r'<div id="tip"[^>]*>(.*?)</div>', dom, re.S).group(1))
    t = records[e]["turns"][k]
    values = dict(re.findall(r"^(κ|log πs − log πT)\s+(\S+)$", tip, re.M))
    assert float(values["κ"]) == pytest.approx(t["confidence"][1], abs=1e-4), tip
    assert float(values["log πs − log πT"]) == pytest.approx(t["logprob"][1] - t["teacher_logprob"][1], abs=2e-4)
    assert json.dumps(t["tokens"][1], ensure_ascii=False) in tip

    shot = tmp_path / "viewer.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,1000", "--virtual-time-budget=5000", url], tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
