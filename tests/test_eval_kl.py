"""Evaluation diagnostics: the per-turn reverse KL to the teacher and the repeat flags, from the batched
scorer to the callback's records and `sage.study.eval_games.summarize`, on real bundled games."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from callbacks.evaluation import game_record
from sage.cli import cli
from sage.distill.eval_kl import turn_kl
from sage.envs import PromptBuilder, find_games, split_key
from sage.models import SMOLLM2_VOCAB
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import rollout
from sage.specs import RolloutSpec
from sage.study.eval_games import summarize
from tests.helpers import (
    assert_equal_up_to_float64_rounding,
    make_episode,
    make_turn,
    tiny_model,
    tiny_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_TURNS = 3


@pytest.fixture(scope="module")
def models():
    """Float64 student and teacher: batched and direct forwards then differ only by float64 rounding."""
    return tiny_model(seed=0, dtype=torch.float64), tiny_model(seed=1, dtype=torch.float64)


@pytest.fixture(scope="module")
def played(pool, models):
    """mode -> the student's greedy episodes on three real games."""
    games = find_games("valid_seen", limit=2) + find_games("valid_unseen", limit=1)
    tok = tiny_tokenizer()
    return {mode: rollout(HFGenerator(models[0], tok), pool, games, PromptBuilder(), tok,
                          RolloutSpec(context_mode=mode, max_new_tokens=12), greedy=True)
            for mode in ("window", "transcript")}


def _log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, :, :SMOLLM2_VOCAB].double(), -1)


def _reference(student, teacher, ep) -> list[tuple[float, int]]:
    """Per turn (sum of token KL(p_S || p_T), tokens) from plain full-sequence forwards, float64."""
    out = []
    for t in ep.turns:
        if ep.sequence_ids is not None:
            ids, start = ep.sequence_ids, t.offset
        else:
            ids, start = list(t.context_ids) + list(t.response_ids), len(t.context_ids)
        rows = slice(start - 1, start - 1 + len(t.response_ids))
        logp_s, logp_t = _log_probs(student, ids)[rows], _log_probs(teacher, ids)[rows]
        out.append((float((logp_s.exp() * (logp_s - logp_t)).sum()), len(t.response_ids)))
    return out


def test_kl_of_a_model_to_itself_is_zero_and_to_another_positive(played, models):
    student, teacher = models
    episodes = played["transcript"]
    same = [kl for ep in turn_kl(student, student, episodes) for kl, _ in ep]
    other = [kl for ep in turn_kl(student, teacher, episodes) for kl, _ in ep]
    assert len(same) == len(other) == sum(ep.length for ep in episodes) > 0
    assert all(abs(kl) <= 1e-12 for kl in same)
    assert all(kl > 1e-3 for kl in other)


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_turn_kl_equals_a_direct_float64_forward_whatever_the_batching(played, models, mode):
    student, teacher = models
    episodes = played[mode]
    ref = [r for ep in episodes for r in _reference(student, teacher, ep)]
    assert [n for _, n in ref] == [len(t.response_ids) for ep in episodes for t in ep.turns]
    expected = torch.tensor([kl for kl, _ in ref], dtype=torch.float64)
    for budget, chunk in ((1, 5), (10**6, 1024)):  # one row per batch, small chunks / one padded batch
        got = turn_kl(student, teacher, episodes, SMOLLM2_VOCAB, max_batch_tokens=budget, chunk_tokens=chunk)
        assert [n for ep in got for _, n in ep] == [n for _, n in ref]
        got = torch.tensor([kl for ep in got for kl, _ in ep], dtype=torch.float64)
        assert_equal_up_to_float64_rounding(got, expected)


def test_turn_kl_reads_the_shared_columns_of_a_padded_teacher(played, models):
    """A teacher with a padded head (Qwen2.5-style) is compared on the shared vocabulary only."""
    student = models[0]
    padded = tiny_model(seed=1, vocab_size=SMOLLM2_VOCAB + 128, dtype=torch.float64)
    episodes = played["window"][:1]
    got = [kl for ep in turn_kl(student, padded, episodes, SMOLLM2_VOCAB) for kl, _ in ep]
    ref = [kl for kl, _ in _reference(student, padded, episodes[0])]
    assert_equal_up_to_float64_rounding(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64))


def test_sigterm_stops_the_scoring_at_its_next_batch(played, models):
    """A SIGTERM during `sage validate`'s KL scoring stops it after the batch in hand (it waited for the
    whole split before), and the models go back to the modes they were in."""
    import signal

    from sage import preemption

    student, teacher = models
    episodes = played["window"]
    calls = []

    def signal_on_first_forward(module, args):
        calls.append(1)
        if len(calls) == 1:
            preemption._on_sigterm(signal.SIGTERM, None)

    teacher.train()
    handle = student.get_decoder().register_forward_pre_hook(signal_on_first_forward)
    preemption.reset()
    preemption.work_started()
    try:
        with pytest.raises(preemption.Preempted, match="in the eval KL pass"):
            turn_kl(student, teacher, episodes, SMOLLM2_VOCAB, max_batch_tokens=1)  # one row per batch
        assert len(calls) == 1 < sum(ep.length for ep in episodes)
        assert not student.training and teacher.training
        with pytest.raises(preemption.Preempted, match="before the eval KL pass"):
            turn_kl(student, teacher, episodes, SMOLLM2_VOCAB)
        assert len(calls) == 1
    finally:
        handle.remove()
        teacher.eval()
        preemption.reset()


def test_repeat_flags_and_kl_fields_of_a_game_record():
    actions = ["look", "look", "go to desk 1", "look", "", ""]  # "" is an unparsed answer: never a repeat
    turns = [make_turn(k, action=a, eval_kl=0.5 * k, eval_kl_tokens=k + 1) for k, a in enumerate(actions)]
    record = game_record("seen", make_episode(turns))
    assert record["repeat"] == [0, 1, 0, 0, 0, 0]
    assert record["kl"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and record["kl_tokens"] == [1, 2, 3, 4, 5, 6]
    # a new game starts fresh: its first turn is no repeat, whatever the previous game ended with
    assert game_record("seen", make_episode([make_turn(0, action="")]))["repeat"] == [0]
    unscored = game_record("seen", make_episode([make_turn(0), make_turn(1)]))  # no teacher
    assert unscored["repeat"] == [0, 1] and unscored["kl"] is None and unscored["kl_tokens"] is None


def _validate(tmp: Path, pool, config: str, mode: str):
    """`sage validate` through the CLI on 2 + 2 real games; returns the trainer, the episodes it played,
    eval_results.json and the eval_games.jsonl records."""
    args = [
        "--config", str(ROOT / config),
        "--model.student.name_or_path", "tiny-random", "--model.student.num_layers", "2",
        "--data.max_turns", str(MAX_TURNS), "--data.val_games", "2", "--data.rollout.max_new_tokens", "10",
        "--data.rollout.context_mode", mode, "--data.max_tokens_per_micro_batch", "700",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp),
        "--trainer.logger.init_args.save_dir", str(tmp), "--trainer.logger.init_args.version", "v",
    ]
    if "sft" not in config:
        args += ["--model.teacher.name_or_path", "tiny-random", "--model.teacher.seed", "1"]
    c = cli(args=args, run=False)
    c.datamodule.pool = pool
    c.datamodule.setup()
    played, play = [], c.datamodule.player.play
    c.datamodule.player.play = lambda *a, **k: played.extend(eps := play(*a, **k)) or eps
    c.trainer.validate(c.model, datamodule=c.datamodule)
    root = Path(c.trainer.log_dir)
    res = json.loads((root / "eval_results.json").read_text())
    games = [json.loads(x) for x in (root / "eval_games.jsonl").read_text().splitlines()]
    return c, played, res, games


def _direct_rates(episodes, n: int) -> dict:
    """repeat_rate and reverse_kl of the episodes' first n turns, straight from the turns."""
    flags = [int(k > 0 and ep.turns[k].action != "" and ep.turns[k].action == ep.turns[k - 1].action)
             for ep in episodes for k in range(ep.length) if k < n]
    turns = [t for ep in episodes for t in ep.turns[:n]]
    tokens = sum(t.eval_kl_tokens for t in turns)
    return {"repeat_rate": sum(flags) / len(flags),
            "reverse_kl": sum(t.eval_kl for t in turns) / tokens if tokens else None}


@pytest.mark.parametrize("mode", ["transcript", "window"])
def test_summarize_equals_what_the_callback_logged_and_wrote(tmp_path, pool, mode):
    c, played, res, games = _validate(tmp_path, pool, "configs/sage_opd.yaml", mode)
    logged = c.trainer.callback_metrics
    student, teacher = c.model.student, c.model.teacher
    for split in ("seen", "unseen"):
        eps = [ep for ep in played if split_key(ep.split) == split]
        rates = res["turn_rates"][split]
        assert rates["kl_tokens"] == sum(len(t.response_ids) for ep in eps for t in ep.turns) > 0
        for key in ("repeat_rate", "reverse_kl"):
            assert float(logged[f"val/{split}/{key}"]) == pytest.approx(rates[key])
            assert rates[key] == pytest.approx(_direct_rates(eps, MAX_TURNS)[key])
        assert rates["reverse_kl"] > 0
        # the KL the validation step stored is the plain forward's (float32 models: float32 resolution)
        got = [t.eval_kl for ep in eps for t in ep.turns]
        ref = [kl for ep in eps for kl, _ in _reference(student, teacher, ep)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-5, check_dtype=False)
    full = summarize(games)
    for split, rates in res["turn_rates"].items():
        assert full["turn_rates"][split] == pytest.approx(rates)
    cut = summarize(games, max_turns=2)  # the first two turns of every game
    for split in ("seen", "unseen"):
        direct = _direct_rates([ep for ep in played if split_key(ep.split) == split], 2)
        for key in ("repeat_rate", "reverse_kl"):
            assert cut["turn_rates"][split][key] == pytest.approx(direct[key])


def test_without_a_teacher_the_kl_is_absent(tmp_path, pool):
    c, played, res, games = _validate(tmp_path, pool, "configs/sft.yaml", "transcript")
    assert c.model.teacher is None
    assert all(t.eval_kl is None for ep in played for t in ep.turns)
    assert all(g["kl"] is None and g["kl_tokens"] is None for g in games)
    for split, rates in res["turn_rates"].items():
        assert rates["reverse_kl"] is None and rates["kl_tokens"] == 0 and rates["repeat_rate"] is not None
        assert f"val/{split}/reverse_kl" not in c.trainer.callback_metrics
        assert summarize(games)["turn_rates"][split] == pytest.approx(rates)
