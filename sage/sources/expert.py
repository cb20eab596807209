"""``data.source: expert``: expert trajectories for SFT. Each game's stored walkthrough (it wins every game) is
played through the normal rollout loop by a policy that "generates" the expert's answer in the student's
answer format.

Going through the same loop means SFT samples have exactly the prompts, chat template, context
policy and records of on-policy samples; only the answers differ.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from sage.envs import GameInfo, PromptBuilder, walkthrough
from sage.rollout.generation import Generation, SamplingParams
from sage.rollout.loop import rollout
from sage.rollout.records import Episode
from sage.sources.base import Source
from sage.specs import RolloutSpec


@dataclass
class WalkthroughPolicy:
    """Answers turn k of session i with the k-th walkthrough action of game i."""

    tokenizer: object
    plans: list[list[str]]
    answer: str  # the prompt's expert answer (PromptTemplate.expert_answer)

    def __post_init__(self) -> None:
        self._turn = [0] * len(self.plans)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        session_ids: Sequence[Hashable] | None = None,
        keep_cache: bool = False,
    ) -> list[Generation]:
        if session_ids is None:
            raise ValueError("WalkthroughPolicy needs session ids (the rollout loop passes slot numbers)")
        out = []
        for sid in session_ids:
            plan, k = self.plans[sid], self._turn[sid]
            action = plan[k] if k < len(plan) else "look"
            self._turn[sid] += 1
            text = self.answer.format(action=action)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append(Generation(ids, [0.0] * len(ids), text, True))
        return out

    def end_sessions(self, session_ids: Sequence[Hashable]) -> None:
        return None


def expert_episodes(
    games: Sequence[GameInfo],
    prompt: PromptBuilder,
    tokenizer,
    cfg: RolloutSpec,
    pool,
    games_per_rollout: int | None = None,
) -> list[Episode]:
    """Play every game's walkthrough in `pool` in the prompt's answer format (`expert_answer`),
    ``games_per_rollout`` at a time (None: all at once); the episodes are won unless the step limit is too
    small."""
    games = list(games)
    size = games_per_rollout or max(1, len(games))
    episodes: list[Episode] = []
    for i in range(0, len(games), size):
        part = games[i : i + size]
        policy = WalkthroughPolicy(tokenizer, [walkthrough(g) for g in part], prompt.template.expert_answer)
        episodes += rollout(policy, pool, part, prompt, tokenizer, cfg, greedy=True)
    return episodes


class ExpertWalkthroughs(Source):
    def episodes(self, ctx, epoch, games, resume=None):
        return expert_episodes(games, ctx.prompt, ctx.tokenizer, ctx.rollout, ctx.pool, ctx.games_per_rollout)
