"""Shared test builders: tiny real transformers models with SmolLM2's tokenizer, and hand-built records.

Import as ``from helpers import tiny_model, tiny_tokenizer`` (pytest puts tests/ on sys.path).
The first use converts the offline SmolLM2 once into the sage cache (~20 s); later uses take ~0.1 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub

from sage.models import SMOLLM2_VOCAB, load_tokenizer, tiny_random_model  # noqa: E402
from sage.rollout.records import Episode, Turn  # noqa: E402


def tiny_tokenizer():
    """SmolLM2's tokenizer (left padding, pad = eos = <|im_end|> id 2); a fresh object each call."""
    return load_tokenizer("tiny-random")


def tiny_model(seed: int = 0, num_layers: int = 2, vocab_size: int = SMOLLM2_VOCAB):
    """Tiny random Llama (hidden 64) in eval mode with gradients on; same seed -> same weights.
    ``vocab_size`` > 49152 gives a padded LM head like Qwen2.5's."""
    return tiny_random_model(num_layers=num_layers, seed=seed, vocab_size=vocab_size)


def make_turn(step: int = 0, context_ids=(1, 3, 4), response_ids=(5, 6, 2), **fields) -> Turn:
    """A Turn with harmless defaults; any field can be overridden."""
    base = dict(
        game_id="g0", split="valid_seen", task_type="pick_and_place_simple", step=step,
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
        turns.append(make_turn(step=k, context_ids=[], response_ids=resp, offset=len(seq)))
        seq += resp + user
        mask += [1] * len(resp) + [0] * len(user)
        index += [k] * len(resp) + [-1] * len(user)
    return make_episode(turns, sequence_ids=seq, student_mask=mask, turn_index=index, **fields)


def biased_model(bias: dict[int, float], seed: int = 0, num_layers: int = 2):
    """Tiny model whose LM head gets a bias: token id -> added logit at every position (e.g. +30 makes
    that token the argmax everywhere). Replaces the tied head by an untied Linear with a bias."""
    import torch
    from torch import nn

    model = tiny_model(seed=seed, num_layers=num_layers)
    old = model.get_output_embeddings()
    head = nn.utils.skip_init(nn.Linear, old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[token] = value
    model.lm_head = head
    return model


def with_teacher_pass(teacher, episodes, vocab_rows=None):
    """Run the teacher's annotation pass (log-probs, hidden states) on every turn but keep the hand-set
    confidences, so a test controls kappa while the loss gets the teacher states it needs."""
    from sage.distill.teacher import TeacherScorer

    turns = [t for ep in episodes for t in ep.turns]
    kept = [list(t.confidence) if t.confidence is not None else None for t in turns]
    TeacherScorer(teacher, vocab_rows=vocab_rows).score_turns(turns)
    for t, c in zip(turns, kept, strict=True):
        t.confidence = c
    return episodes
