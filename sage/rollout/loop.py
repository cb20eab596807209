"""The multi-turn rollout loop: every active game advances together, one batched generation and one
batched environment step per turn; finished games drop out of the batch.

What the policy sees each turn, how a turn is recorded and when a game no longer fits is the context
mode's (`sage.rollout.context`, chosen from ``cfg.context_mode`` once, at the start).

A rollout can stop at a turn boundary (``stop()`` true, e.g. after SIGTERM) and raise `RolloutStopped` with
a `PartialRollout`: the turns played so far, which games were done and the sampler's state. A turn whose
environment workers died while a stop was pending (the same signal sent to the whole process group) is
not recorded: the rollout stops at the boundary before it. Passed back as ``resume``, it replays every
game's recorded actions in fresh environments (ALFWorld is deterministic given the actions; a different
observation is refused) and plays on from that turn: bit for bit the rollout that was not stopped in
window mode; transcript mode prefills each kept transcript afresh, so its next samples may differ by
floating-point rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage.envs import GameInfo, PromptBuilder, parse_action
from sage.rollout.chat import ChatCodec
from sage.rollout.context import Context, ContextLimitError, Slot, context_for, limit_hint
from sage.rollout.generation import Generator, SamplingParams
from sage.rollout.records import Episode, Turn
from sage.specs import RolloutSpec

__all__ = ["ContextLimitError", "PartialRollout", "ReplayMismatchError", "RolloutStopped", "rollout"]

log = logging.getLogger(__name__)


@dataclass
class PartialRollout:
    """A rollout stopped at a turn boundary: each game's episode so far, whether it had ended, the turn
    number and the generator's sampler state."""

    episodes: list[Episode]
    done: list[bool]
    turn: int
    rng_state: Any = None
    overflow: dict[str, int] = field(default_factory=dict)


class RolloutStopped(Exception):
    def __init__(self, partial: PartialRollout) -> None:
        super().__init__(f"rollout stopped at turn {partial.turn}")
        self.partial = partial


class ReplayMismatchError(RuntimeError):
    """A resumed rollout's environment answered a recorded action differently than when it was played."""


def rollout(
    policy: Generator,
    pool,
    games: Sequence[GameInfo],
    prompt: PromptBuilder,
    tokenizer,
    cfg: RolloutSpec,
    greedy: bool = False,
    on_turn: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    resume: PartialRollout | None = None,
) -> list[Episode]:
    """Play `games` to the end with `policy`; returns one Episode per game, in order. ``stop`` and
    ``resume``: see the module docstring."""
    if not games:
        return []
    policy.end_sessions(list(range(len(games))))  # session ids are slot numbers: forget older episodes
    codec = ChatCodec(tokenizer, cfg.chat_template_kwargs)
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens, greedy=greedy)
    context = context_for(cfg.context_mode)
    slots: list[Slot] = []
    for game, res in zip(games, pool.reset(list(games)), strict=True):
        ep = Episode(game.game_id, game.split, game.task_type, res.task, error=res.error)
        slot = Slot(ep, res.observation, list(res.admissible), [], done=res.done or res.error is not None, state=res)
        if not slot.done:
            context.begin(slot, prompt, codec, res.task)
        slots.append(slot)

    turn_no = 0
    overflow: dict[str, int] = {}  # game id -> longest prompt that had to be left-truncated (window mode)
    if resume is not None:
        _replay(slots, resume, pool, prompt, context)
        turn_no, overflow = resume.turn, dict(resume.overflow)
        if resume.rng_state is not None and hasattr(policy, "set_rng_state"):
            policy.set_rng_state(resume.rng_state)
    while True:
        active = context.playable(slots, [i for i, s in enumerate(slots) if not s.done], policy, cfg, turn_no == 0)
        if not active:
            break
        rng_state = policy.get_rng_state() if hasattr(policy, "get_rng_state") else None
        if stop is not None and stop():
            raise RolloutStopped(PartialRollout([s.episode for s in slots], [s.done for s in slots], turn_no,
                                                rng_state, overflow))
        overflow_before = dict(overflow)
        if on_turn is not None:
            on_turn(turn_no, len(active))
        prompts = [context.prompt(slots[i], prompt, codec, cfg, overflow) for i in active]
        gens = policy.generate(prompts, params, session_ids=active, keep_cache=context.keep_cache)
        parsed = [parse_action(g.text) for g in gens]
        actions: list[str | None] = [None] * len(slots)
        for i, p in zip(active, parsed, strict=True):
            actions[i] = p.action
        results = pool.step(actions)
        if stop is not None and any(results[i].worker_died for i in active) and stop():
            # The signal that stops this run reached the environment workers too (a process-group SIGTERM):
            # their games were cut, not ended. Stop before this turn; the resumed rollout plays it again.
            raise RolloutStopped(PartialRollout([s.episode for s in slots], [s.done for s in slots], turn_no,
                                                rng_state, overflow_before))
        for i, ctx, gen, p in zip(active, prompts, gens, parsed, strict=True):
            slot, res = slots[i], results[i]
            ep = slot.episode
            context_ids, offset = context.recorded(ctx)
            turn = Turn(
                game_id=ep.game_id, split=ep.split, task_type=ep.task_type, index=len(ep.turns),
                context_ids=context_ids, response_ids=gen.token_ids,
                logprobs=gen.logprobs, response_text=gen.text, action=p.action, valid_format=p.valid,
                observation=slot.observation, admissible=slot.admissible, feedback=res.observation,
                done=res.done, won=res.won, offset=offset, expert_action=slot.state.expert_action,
                subgoal_before=slot.state.subgoal, subgoal_after=res.subgoal,
            )
            ep.turns.append(turn)
            slot.history.append((slot.observation, p.action))
            slot.observation, slot.admissible, slot.state = res.observation, list(res.admissible), res
            if res.error is not None:
                ep.error = res.error
            if res.done or res.error is not None:
                slot.done = True
                ep.won = bool(res.won) and res.error is None
            context.advance(slot, gen.token_ids, slot.done, prompt)
        context.release(policy, [i for i in active if slots[i].done])
        turn_no += 1

    if overflow:
        log.warning(
            "window mode: %d of %d episodes had a prompt too long even without history (longest %d tokens); "
            "it was left-truncated, so the task text may be cut (Episode.truncated). %s",
            len(overflow), len(slots), max(overflow.values()), limit_hint(cfg, max(overflow.values())),
        )
    for s in slots:
        context.finish(s)
    return [s.episode for s in slots]


def _replay(slots: list[Slot], resume: PartialRollout, pool, prompt: PromptBuilder, context: Context) -> None:
    """Bring fresh environments (just reset) and slots to where `resume` stopped: every game's recorded
    actions are stepped again, turn by turn, and each feedback must be the one recorded."""
    if [s.episode.game_id for s in slots] != [e.game_id for e in resume.episodes]:
        raise ReplayMismatchError("the kept rollout was played on other games than this one")
    for k in range(max((e.length for e in resume.episodes), default=0)):
        actions = [e.turns[k].action if k < e.length else None for e in resume.episodes]
        results = pool.step(actions)
        for i, (slot, ep) in enumerate(zip(slots, resume.episodes, strict=True)):
            if actions[i] is None:
                continue
            res, turn = results[i], ep.turns[k]
            if res is None or res.observation != turn.feedback:
                raise ReplayMismatchError(
                    f"game {ep.game_id}, turn {k}: the environment answered {getattr(res, 'observation', None)!r} "
                    f"to {turn.action!r}, the kept rollout recorded {turn.feedback!r}")
            slot.history.append((slot.observation, turn.action))
            slot.observation, slot.admissible = res.observation, list(res.admissible)
            context.advance(slot, turn.response_ids, res.done or res.error is not None, prompt)
    for slot, ep, done in zip(slots, resume.episodes, resume.done, strict=True):
        slot.episode, slot.done = ep, done
