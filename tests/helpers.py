"""Shared test builders: tiny real transformers models with SmolLM2's tokenizer, and hand-built records.

Import as ``from helpers import tiny_model, tiny_tokenizer`` (pytest puts tests/ on sys.path).
The first use converts the offline SmolLM2 once into the sage cache (~20 s); later uses take ~0.1 s.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub

import torch  # noqa: E402

from sage.models import SMOLLM2_VOCAB, load_tokenizer, tiny_random_model  # noqa: E402
from sage.rollout.records import Episode, Turn  # noqa: E402

# Tolerances for comparisons whose two sides are equal in exact arithmetic (batch shapes, micro-batch
# splits, ranks, KV reuse vs fresh prefill, batched vs direct forwards) but round differently: the
# summation order of a float reduction depends on the batch width and on the CPU's SIMD/BLAS blocking.
# Such comparisons run the tiny models in float64 and allow only rounding, derived from the dtype's
# machine epsilon, never a number tuned on one CPU.
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
# The longest reduction in the tiny models is the softmax over the 49152-token vocabulary; n * eps * |x|
# is the classical worst-case rounding bound of an n-term sum (Higham, Accuracy and Stability, 4.2).
FLOAT64_BUDGET = SMOLLM2_VOCAB
# Values the code computes in float32 by design even for a float64 model (sampling log-probs, teacher
# log-probs and kappa, the judge's label log-probs): a float32 log-softmax is accurate to a few roundings
# of its scale (|log p| and log V); 8 roundings leave room for any summation order.
FLOAT32_ROUNDINGS = 8
LOG_VOCAB = math.log(SMOLLM2_VOCAB)


def assert_equal_up_to_float64_rounding(actual, expected, terms: int = FLOAT64_BUDGET) -> None:
    """Two float64 results that are equal in exact arithmetic: |actual - expected| <= terms * eps64 * scale,
    scale = max|expected| (normwise, so entries near 0 are judged at the tensor's own scale). About 1e-11
    relative: float32 rounding leaking in (1e-7) or any real difference fails it."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.dtype == expected.dtype == torch.float64, (actual.dtype, expected.dtype)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    tol = terms * EPS64 * scale
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol)


def float32_tol(scale: float) -> float:
    """Absolute tolerance for a value computed in float32 by design (see FLOAT32_ROUNDINGS) whose
    intermediate magnitude is ``scale`` (for a log-prob: max(1, |log p|))."""
    return FLOAT32_ROUNDINGS * EPS32 * max(1.0, scale)


def assert_float32_close(got, ref, both_float32: bool = False) -> None:
    """Element-wise ``|got - ref| <= float32_tol(|ref|)`` for values stored in float32 by design;
    ``ref`` is a float64 reference, or (``both_float32``) another float32 result, whose own rounding
    doubles the allowance. Use for log-probs and kappa of float64 models."""
    got = [float(x) for x in torch.as_tensor(got, dtype=torch.float64).flatten()]
    ref = [float(x) for x in torch.as_tensor(ref, dtype=torch.float64).flatten()]
    assert len(got) == len(ref), (len(got), len(ref))
    sides = 2 if both_float32 else 1
    bad = [(k, g, r) for k, (g, r) in enumerate(zip(got, ref, strict=True)) if not abs(g - r) <= sides * float32_tol(abs(r))]
    assert not bad, f"beyond float32 rounding at (index, got, ref): {bad[:5]}"


def tiny_tokenizer():
    """SmolLM2's tokenizer (left padding, pad = eos = <|im_end|> id 2); a fresh object each call."""
    return load_tokenizer("tiny-random")


def char_tokenizer():
    """Every printable ASCII character its own token (ids 3..97, eos/pad 1): the labels SKIP and STRONG
    then share their first tokens, as labels may in a teacher's real vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "\n": 2} | {chr(c): c - 29 for c in range(32, 127)}
    chars = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    chars.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=chars, eos_token="<eos>", pad_token="<eos>")


def tiny_model(seed: int = 0, num_layers: int = 2, vocab_size: int = SMOLLM2_VOCAB, dtype=torch.float32):
    """Tiny random Llama (hidden 64) in eval mode with gradients on; same seed -> same weights (in any
    dtype: built in float32, then cast). ``vocab_size`` > 49152 gives a padded LM head like Qwen2.5's."""
    return tiny_random_model(num_layers=num_layers, seed=seed, vocab_size=vocab_size, dtype=dtype)


def make_turn(index: int = 0, context_ids=(1, 3, 4), response_ids=(5, 6, 2), **fields) -> Turn:
    """A Turn with harmless defaults; any field can be overridden."""
    base = dict(
        game_id="g0", split="valid_seen", task_type="pick_and_place_simple", index=index,
        context_ids=list(context_ids), response_ids=list(response_ids), logprobs=[0.0] * len(response_ids),
        response_text="<think>ok</think><action>look</action>", action="look", valid_format=True,
        observation="You are in the middle of a room.", admissible=["look", "inventory"],
        feedback="You are in the middle of a room.", done=False, won=False,
    )
    base.update(fields)
    return Turn(**base)


def make_episode(turns: list[Turn], task: str = "put a clean mug in coffeemachine.", **fields) -> Episode:
    base = dict(game_id="g0", split="valid_seen", task_type="pick_and_place_simple", task=task, turns=turns)
    base.update(fields)
    return Episode(**base)


def transcript_episode(prefix: list[int], parts: list[tuple[list[int], list[int]]], **fields) -> Episode:
    """Transcript-mode episode: ``prefix`` then, per turn, (response ids, following user ids).

    Fills sequence_ids/student_mask/turn_index and each turn's offset; turns get empty context_ids."""
    seq, mask, index, turns = list(prefix), [0] * len(prefix), [-1] * len(prefix), []
    for k, (resp, user) in enumerate(parts):
        turns.append(make_turn(index=k, context_ids=[], response_ids=resp, offset=len(seq)))
        seq += resp + user
        mask += [1] * len(resp) + [0] * len(user)
        index += [k] * len(resp) + [-1] * len(user)
    return make_episode(turns, sequence_ids=seq, student_mask=mask, turn_index=index, **fields)


def biased_model(bias: dict[int, float], seed: int = 0, num_layers: int = 2, dtype=torch.float32):
    """Tiny model whose LM head gets a bias: token id -> added logit at every position (e.g. +30 makes
    that token the argmax everywhere). Replaces the tied head by an untied Linear with a bias."""
    from torch import nn

    model = tiny_model(seed=seed, num_layers=num_layers, dtype=dtype)
    old = model.get_output_embeddings()
    head = nn.utils.skip_init(nn.Linear, old.in_features, old.out_features, bias=True, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[token] = value
    model.lm_head = head
    return model


def with_teacher_pass(teacher, episodes, vocab_rows=None):
    """Run the teacher's annotation pass (log-probs, hidden states) on every turn but keep the hand-set
    confidences, so a test controls kappa while the loss gets the teacher states it needs. Returns the
    hidden states by (episode, turn), as `sage.distill.annotate.Annotator` does."""
    from sage.distill.teacher import TeacherScorer

    keys = [(e, k) for e, ep in enumerate(episodes) for k in range(len(ep.turns))]
    turns = [episodes[e].turns[k] for e, k in keys]
    kept = [list(t.confidence) if t.confidence is not None else None for t in turns]
    hidden = TeacherScorer(teacher, vocab_rows=vocab_rows).score_turns(turns)
    for t, c in zip(turns, kept, strict=True):
        t.confidence = c
    return dict(zip(keys, hidden, strict=True))


def weighted_loss(token_loss, mask, gate, confidence, denominator, eps: float = 1e-8):
    """The step-loss contract of `sage.distill.objective` on a ``[B, T]`` token-loss tensor: ``sum(g * kappa *
    l * mask) / max(eps, denominator)`` from the production pieces (`token_weights`, `normalized`), with
    positions of weight 0 removed by ``torch.where`` as the fused loss drops them."""
    from sage.distill.objective import normalized, token_weights
    from sage.upcast import compute_dtype

    dtype = compute_dtype(token_loss.dtype)
    w = token_weights(mask.to(dtype), gate.to(dtype), confidence.to(dtype))
    loss = torch.where(w != 0, token_loss.to(dtype), torch.zeros((), dtype=dtype, device=token_loss.device))
    return normalized((w * loss).sum(), denominator, eps)
