"""One round of teacher data: play games with `ExpertMixPolicy`, keep the expert's turns as the policy's
training targets and turn every kind of turn into judge examples with offline labels.

Both kinds leave as transcript-mode `Episode`s, so the normal SFT path (ExperienceBuilder ->
transcript samples -> loss on `student_mask`) trains them with no special case:
- a policy episode is the whole game as one chat; `student_mask` keeps only the turns whose answer is
  exactly the expert's (noise turns and the model's own deviations stay in the context, untrained, so
  the next expert turn teaches recovery from a state the policy reached);
- a judge episode is one judge prompt (the project's judge prompt, rendered as the judge sees it)
  followed by the offline label's tokens, the only trained tokens.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Sequence

import torch

from sage.envs import GameInfo, PromptBuilder
from sage.progress import Phase
from sage.rollout.engines import make_generator
from sage.rollout.loop import rollout
from sage.rollout.records import Episode, Turn
from sage.teacher.labels import offline_labels
from sage.teacher.policy import SOURCES, ExpertMixPolicy, Mix, PeekPool


def keep_expert_turns(ep: Episode, answer: str) -> int:
    """Zero `student_mask` on turns whose answer is not exactly the expert's; returns turns kept."""
    kept = 0
    for t in ep.turns:
        trained = t.expert_action is not None and t.response_text == answer.format(action=t.expert_action)
        kept += trained
        if not trained:
            for j in range(t.offset, t.offset + len(t.response_ids)):
                ep.student_mask[j] = 0
    return kept


def judge_episode(judge, ep: Episode, k: int, label: str, weight: float = 1.0) -> Episode:
    """The judge prompt for turn k of `ep` followed by `label`'s tokens (the trained part, at loss `weight`)."""
    text = judge.prompt_text(ep, k)
    prompt = judge.tokenizer(text, add_special_tokens=False)["input_ids"]
    label_ids = judge.label_token_ids(text)[judge.labels.index(label)]
    src = ep.turns[k]
    turn = Turn(game_id=ep.game_id, split="judge", task_type=ep.task_type, index=0, context_ids=[],
                response_ids=list(label_ids), logprobs=[0.0] * len(label_ids), response_text=label, action="",
                valid_format=True, observation=src.observation, admissible=[], feedback=src.feedback, done=True,
                won=False, offset=len(prompt), weight=weight)
    return Episode(f"{ep.game_id}#judge{k}", "judge", ep.task_type, ep.task, turns=[turn],
                   sequence_ids=prompt + list(label_ids), student_mask=[0] * len(prompt) + [1] * len(label_ids),
                   turn_index=[-1] * len(prompt) + [0] * len(label_ids))


def balanced_pick(candidates: Sequence[tuple[Episode, int, str]], n: int, labels: Sequence[str],
                  rng: random.Random) -> list[tuple[Episode, int, str]]:
    """Up to `n` candidates, as equal a share per label as the candidates allow (seeded)."""
    pools = {lab: [c for c in candidates if c[2] == lab] for lab in labels}
    for p in pools.values():
        rng.shuffle(p)
    picked: list = []
    while len(picked) < n and any(pools.values()):
        for lab in labels:
            if pools[lab] and len(picked) < n:
                picked.append(pools[lab].pop())
    return picked


def playing_copy(model):
    """A frozen copy of `model` for generation: LoRA merged (peft's separate adapter matmuls cost time at
    every decode step) and, under autocast, in the autocast dtype (autocast would otherwise re-cast every
    float32 weight matrix at every decode step: measured here, that made a 3-row decode step of the
    30-layer model take 0.7 s)."""
    player = copy.deepcopy(model)
    player = player.merge_and_unload() if hasattr(player, "merge_and_unload") else player
    device = next(player.parameters()).device.type
    if torch.is_autocast_enabled(device):
        player = player.to(torch.get_autocast_dtype(device))
    return player.eval().requires_grad_(False)


def collect_round(*, games: list[GameInfo], pool, prompt: PromptBuilder, tokenizer, rollout_spec, mix: Mix,
                  answer: str, judge, judge_examples: int, model, seed: int, games_per_rollout: int | None,
                  label: str = "teacher data", stop=None, judge_weight: float = 1.0) -> tuple[list[Episode], dict[str, float]]:
    """Play `games` (``games_per_rollout`` at a time; None: all at once) with the mix; return the policy and
    judge episodes and the round's statistics (sources of turns, label counts, episodes kept). ``stop``
    (checked at turn boundaries, e.g. SIGTERM) ends the round with `RolloutStopped`; a round is seeded, so
    it replays the same."""
    peek = PeekPool(pool)
    gen = None
    if mix.model > 0:
        gen = make_generator(rollout_spec.engine, playing_copy(model), tokenizer, seed=seed,
                             max_model_len=rollout_spec.max_context_tokens)
    size = games_per_rollout or max(1, len(games))
    played: list[Episode] = []
    sources: Counter = Counter()
    phase = Phase(label, total=pool.max_steps * -(-len(games) // size), unit="turn")
    try:
        with phase:
            for i in range(0, len(games), size):
                policy = ExpertMixPolicy(peek, tokenizer, mix, answer, seed + i, gen)
                played += rollout(policy, peek, games[i : i + size], prompt, tokenizer, rollout_spec, greedy=True,
                                  on_turn=lambda turn, active: phase.update(1, games=active), stop=stop)
                for srcs in policy.sources.values():
                    sources.update(srcs)
            played = [ep for ep in played if ep.error is None]
            policy_eps = [ep for ep in played if ep.won]
            kept = sum(keep_expert_turns(ep, answer) for ep in policy_eps)
            rng = random.Random(seed)
            candidates = [(ep, k, lab) for ep in played for k, lab in enumerate(offline_labels(ep, judge.labels))]
            picked = balanced_pick(candidates, judge_examples, judge.labels, rng)
            judge_eps = [judge_episode(judge, ep, k, lab, judge_weight) for ep, k, lab in picked]
            counts = Counter(lab for _, _, lab in candidates)
            picked_counts = Counter(lab for _, _, lab in picked)
            phase.close(f"{len(played)} games, {sum(ep.won for ep in played)} won, {kept} expert turns trained, "
                        f"{len(judge_eps)} judge examples ({', '.join(f'{k} {v}' for k, v in picked_counts.items())})")
    finally:
        del gen
    turns = max(1, sum(sources.values()))
    stats = {f"data/source_{s}": sources[s] / turns for s in SOURCES}
    stats |= {f"data/label_{k.lower()}": v / max(1, len(candidates)) for k, v in counts.items()}
    stats |= {"data/games": float(len(played)), "data/games_won": float(sum(ep.won for ep in played)),
              "data/expert_turns_trained": float(kept), "data/judge_examples": float(len(judge_eps))}
    return policy_eps + judge_eps, stats
