"""Who acts on each turn of a teacher-data rollout: the hand-coded expert, a noise source, or the model.

`ExpertMixPolicy` is a `Generator` (the rollout loop's policy interface), so teacher data is played by the
same loop, prompts and transcript code as every on-policy rollout: only the choice of answer differs.
It reads the expert's next action for each game from `PeekPool`, a thin wrapper that remembers the latest
`StepResult` of each slot (the loop's session ids are slot numbers).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from sage.envs import StepResult, parse_action
from sage.rollout.generation import Generation, SamplingParams

SOURCES = ("expert", "model", "random", "invalid", "repeat", "malformed")


class PeekPool:
    """An `EnvPool` that also keeps each slot's latest result (the expert's next action rides in it)."""

    def __init__(self, pool):
        self.pool = pool
        self.latest: list[StepResult] = []

    @property
    def max_steps(self) -> int:
        return self.pool.max_steps

    def reset(self, games):
        self.latest = list(self.pool.reset(games))
        return self.latest

    def step(self, actions):
        results = self.pool.step(actions)
        for i, res in enumerate(results):
            if res is not None:
                self.latest[i] = res
        return results


@dataclass
class Mix:
    """Per-turn chances of each source; the expert takes the rest."""

    model: float = 0.0  # the model being trained answers (DAgger: states the model itself reaches)
    random: float = 0.0  # a random admissible action other than the expert's (a detour)
    invalid: float = 0.0  # a command admissible earlier in the game but not now ("Nothing happens.")
    repeat: float = 0.0  # the previous action again
    malformed: float = 0.0  # an answer with no parsable action (what a weak student writes; "Nothing happens.")


def malformed_answer(rng: random.Random, state: StepResult, tokenizer) -> str:
    """One answer that `parse_action` rejects, in a form drawn at random from those weak students write: the
    command without its tags, an unclosed tag, text copied from the observation, or random tokens."""
    action = state.expert_action or rng.choice([a for a in state.admissible if a != "help"] or ["look"])
    words = state.observation.split() or ["..."]
    start = rng.randrange(len(words))
    forms = (
        lambda: action,
        lambda: f"<action>{action}",
        lambda: " ".join(words[start : start + rng.randint(3, 30)]),
        lambda: tokenizer.decode([rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(3, 30))],
                                 skip_special_tokens=True),
    )
    text = forms[rng.randrange(len(forms))]()
    return text if text.strip() and not parse_action(text).valid else action


class ExpertMixPolicy:
    """Answers each session's turn from one source drawn per turn (seeded). Non-model answers are
    ``answer.format(action=...)`` tokenized like a model's output (no end-of-turn token: generation stops
    at ``</action>`` and the chat template closes the turn)."""

    def __init__(self, peek: PeekPool, tokenizer, mix: Mix, answer: str, seed: int, model=None):
        if mix.model > 0 and model is None:
            raise ValueError("a model share above 0 needs the model's generator")
        self.peek, self.tokenizer, self.mix, self.answer, self.model = peek, tokenizer, mix, answer, model
        self.rng = random.Random(seed)
        self._seen: dict[Hashable, set[str]] = {}  # commands admissible at some earlier state of the game
        self._last: dict[Hashable, str] = {}
        self.sources: dict[Hashable, list[str]] = {}  # per session: the source of each turn, in order

    def _draw(self, sid: Hashable, state: StepResult) -> tuple[str, str | None]:
        u, m = self.rng.random(), self.mix
        admissible = [a for a in state.admissible if a != "help"]
        if u < m.model:
            return "model", None
        u -= m.model
        if u < m.random:
            others = [a for a in admissible if a != state.expert_action]
            if others:
                return "random", self.rng.choice(others)
        elif u < m.random + m.invalid:
            stale = sorted(self._seen.get(sid, set()) - set(state.admissible))
            if stale:
                return "invalid", self.rng.choice(stale)
        elif u < m.random + m.invalid + m.repeat:
            if self._last.get(sid):
                return "repeat", self._last[sid]
        elif u < m.random + m.invalid + m.repeat + m.malformed:
            return "malformed", None
        return "expert", state.expert_action or "look"

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 session_ids: Sequence[Hashable] | None = None, keep_cache: bool = False) -> list[Generation]:
        if session_ids is None:
            raise ValueError("ExpertMixPolicy needs session ids (the rollout loop passes slot numbers)")
        out: list[Generation | None] = [None] * len(prompts)
        by_model = []
        for i, sid in enumerate(session_ids):
            state = self.peek.latest[sid]
            source, action = self._draw(sid, state)
            self.sources.setdefault(sid, []).append(source)
            self._seen.setdefault(sid, set()).update(state.admissible)
            if source == "model":
                by_model.append(i)
                continue
            if source == "malformed":
                text = malformed_answer(self.rng, state, self.tokenizer)
            else:
                text = self.answer.format(action=action)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            out[i] = Generation(ids, [0.0] * len(ids), text, True)
        if by_model:
            gens = self.model.generate([prompts[i] for i in by_model], params,
                                       session_ids=[session_ids[i] for i in by_model], keep_cache=keep_cache)
            for i, g in zip(by_model, gens, strict=True):
                out[i] = g
        for sid, g in zip(session_ids, out, strict=True):
            self._last[sid] = parse_action(g.text).action
        return out

    def end_sessions(self, session_ids: Sequence[Hashable]) -> None:
        for sid in session_ids:
            self._seen.pop(sid, None)
            self._last.pop(sid, None)
        if self.model is not None:
            self.model.end_sessions(session_ids)
