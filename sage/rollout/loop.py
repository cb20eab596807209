"""The multi-turn rollout loop: every active game advances together, one batched generation and one
batched environment step per turn; finished games drop out of the batch.

Context modes:
- ``window`` (verl-agent style): each turn is a fresh prompt (task, last N observation/action pairs,
  current observation, admissible actions). Over-long prompts: the history window is shortened, then
  the prompt is left-truncated to ``max_context_tokens`` (``Episode.truncated`` records it).
- ``transcript`` (verl agent-loop style): the episode is one append-only chat; the generator reuses
  the episode's KV cache so only new tokens are prefilled. An episode whose transcript plus the next
  answer would exceed ``max_context_tokens`` ends there, not won, with ``Episode.truncated`` set.

A rollout can stop at a turn boundary (``stop()`` true, e.g. after SIGTERM) and raise `RolloutStopped` with
a `PartialRollout`: the turns played so far, which games were done and the sampler's state. A turn whose
environment workers died while a stop was pending (the same signal sent to the whole process group) is
not recorded: the rollout stops at the boundary before it. Passed back as ``resume``, it replays every
game's recorded actions in fresh environments (ALFWorld is deterministic given the actions; a different
observation is refused) and plays on from that turn: bit for bit the rollout that was not stopped in
window mode; transcript mode prefills each kept transcript afresh, so its next samples may differ by
floating-point rounding.

A limit below the first prompt: ``window`` left-truncates it (the task text may be cut) and logs a
warning; ``transcript`` ends such an episode before its first turn (no turns, truncated) with a warning,
and raises `ContextLimitError` when no game of the rollout fits, since nothing could be played.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage.envs import GameInfo, PromptBuilder, parse_action
from sage.errors import InputError
from sage.rollout.chat import ChatCodec, Transcript
from sage.rollout.generation import Generator, SamplingParams
from sage.rollout.records import Episode, Turn
from sage.specs import RolloutSpec

log = logging.getLogger(__name__)


class ContextLimitError(InputError, ValueError):
    """``max_context_tokens`` leaves no room for any game's first prompt (transcript mode)."""


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


@dataclass
class _Slot:
    episode: Episode
    observation: str
    admissible: list[str]
    history: list[tuple[str, str]]
    transcript: Transcript | None = None
    done: bool = False
    state: object = None  # the latest StepResult (its privileged expert fields label the next turn)


def _window_prompt(
    slot: _Slot, prompt: PromptBuilder, codec: ChatCodec, cfg: RolloutSpec, overflow: dict[str, int]
) -> list[int]:
    """Shorten the history until the prompt fits, then left-truncate as the last resort (recording the
    untruncated length per game in ``overflow``)."""
    ep = slot.episode
    for n in range(min(cfg.window_history, len(slot.history)), -1, -1):
        hist = slot.history[-n:] if n else []
        msgs = prompt.window_messages(ep.task, hist, slot.observation, slot.admissible, step=len(slot.history))
        ids = codec.prompt_ids(msgs)
        if len(ids) + cfg.max_new_tokens <= cfg.max_context_tokens:
            return ids
    ep.truncated = True
    overflow[ep.game_id] = max(overflow.get(ep.game_id, 0), len(ids))
    keep = max(1, cfg.max_context_tokens - cfg.max_new_tokens)
    return ids[-keep:]


def _limit_hint(cfg: RolloutSpec, longest: int) -> str:
    return (f"max_context_tokens={cfg.max_context_tokens} minus max_new_tokens={cfg.max_new_tokens} leaves "
            f"{cfg.max_context_tokens - cfg.max_new_tokens} prompt tokens; set data.rollout.max_context_tokens "
            f">= {longest + cfg.max_new_tokens} to avoid this")


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
    transcript = cfg.context_mode == "transcript"
    slots: list[_Slot] = []
    for game, res in zip(games, pool.reset(list(games)), strict=True):
        ep = Episode(game.game_id, game.split, game.task_type, res.task, error=res.error)
        slot = _Slot(ep, res.observation, list(res.admissible), [], done=res.done or res.error is not None, state=res)
        if transcript and not slot.done:
            slot.transcript = Transcript.start(codec, prompt.transcript_first(res.task, res.observation, res.admissible))
        slots.append(slot)

    turn_no = 0
    overflow: dict[str, int] = {}  # window mode: game id -> longest prompt that had to be left-truncated
    if resume is not None:
        _replay(slots, resume, pool, prompt, transcript)
        turn_no, overflow = resume.turn, dict(resume.overflow)
        if resume.rng_state is not None and hasattr(policy, "set_rng_state"):
            policy.set_rng_state(resume.rng_state)
    while True:
        active = [i for i, s in enumerate(slots) if not s.done]
        if transcript:
            kept = _drop_overlong(slots, active, policy, cfg)
            if turn_no == 0 and len(kept) < len(active):
                _first_prompt_overflow(slots, active, kept, cfg)
            active = kept
        if not active:
            break
        rng_state = policy.get_rng_state() if hasattr(policy, "get_rng_state") else None
        if stop is not None and stop():
            raise RolloutStopped(PartialRollout([s.episode for s in slots], [s.done for s in slots], turn_no,
                                                rng_state, overflow))
        overflow_before = dict(overflow)
        if on_turn is not None:
            on_turn(turn_no, len(active))
        if transcript:
            prompts = [slots[i].transcript.ids for i in active]
            gens = policy.generate(prompts, params, session_ids=active, keep_cache=True)
        else:
            prompts = [_window_prompt(slots[i], prompt, codec, cfg, overflow) for i in active]
            gens = policy.generate(prompts, params, session_ids=active)
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
            offset = len(ctx) if transcript else -1
            turn = Turn(
                game_id=ep.game_id, split=ep.split, task_type=ep.task_type, index=len(ep.turns),
                context_ids=[] if transcript else list(ctx), response_ids=gen.token_ids,
                logprobs=gen.logprobs, response_text=gen.text, action=p.action, valid_format=p.valid,
                observation=slot.observation, admissible=slot.admissible, feedback=res.observation,
                done=res.done, won=res.won, offset=offset, expert_action=slot.state.expert_action,
                subgoal_before=slot.state.subgoal, subgoal_after=res.subgoal,
            )
            ep.turns.append(turn)
            if transcript:
                slot.transcript.add_response(gen.token_ids)
            slot.history.append((slot.observation, p.action))
            slot.observation, slot.admissible, slot.state = res.observation, list(res.admissible), res
            if res.error is not None:
                ep.error = res.error
            if res.done or res.error is not None:
                slot.done = True
                ep.won = bool(res.won) and res.error is None
            elif transcript:
                slot.transcript.add_user(prompt.transcript_feedback(res.observation, res.admissible))
        if transcript:
            policy.end_sessions([i for i in active if slots[i].done])
        turn_no += 1

    if overflow:
        log.warning(
            "window mode: %d of %d episodes had a prompt too long even without history (longest %d tokens); "
            "it was left-truncated, so the task text may be cut (Episode.truncated). %s",
            len(overflow), len(slots), max(overflow.values()), _limit_hint(cfg, max(overflow.values())),
        )
    episodes = [s.episode for s in slots]
    if transcript:
        for s in slots:
            if s.transcript is not None:
                _finish_transcript(s.episode, s.transcript)
    return episodes


def _replay(slots: list[_Slot], resume: PartialRollout, pool, prompt: PromptBuilder, transcript: bool) -> None:
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
            if slot.transcript is not None:
                slot.transcript.add_response(turn.response_ids)
                if not (res.done or res.error is not None):
                    slot.transcript.add_user(prompt.transcript_feedback(res.observation, res.admissible))
    for slot, ep, done in zip(slots, resume.episodes, resume.done, strict=True):
        slot.episode, slot.done = ep, done


def _drop_overlong(slots: list[_Slot], active: list[int], policy: Generator, cfg: RolloutSpec) -> list[int]:
    keep, drop = [], []
    for i in active:
        if len(slots[i].transcript.ids) + cfg.max_new_tokens > cfg.max_context_tokens:
            slots[i].done = True
            slots[i].episode.truncated = True
            drop.append(i)
        else:
            keep.append(i)
    if drop:
        policy.end_sessions(drop)
    return keep


def _first_prompt_overflow(slots: list[_Slot], active: list[int], kept: list[int], cfg: RolloutSpec) -> None:
    """Transcript mode, before the first turn: episodes whose first prompt does not fit end with no turns
    (a warning names them); when none fits, nothing can be played and `ContextLimitError` says so."""
    dropped = [i for i in active if i not in set(kept)]
    lengths = {slots[i].episode.game_id: len(slots[i].transcript.ids) for i in dropped}
    if not kept:
        raise ContextLimitError(
            f"data.rollout.max_context_tokens={cfg.max_context_tokens} is smaller than the first prompt of every "
            f"game in this rollout (shortest {min(lengths.values())} tokens, plus max_new_tokens="
            f"{cfg.max_new_tokens}): transcript mode cannot play any turn. Set max_context_tokens >= "
            f"{max(lengths.values()) + cfg.max_new_tokens}, or use context_mode=window, which truncates prompts."
        )
    log.warning(
        "transcript mode: %d of %d episodes end before their first turn, their first prompt (%s) does not fit; %s",
        len(dropped), len(active), ", ".join(f"{g}: {n} tokens" for g, n in lengths.items()),
        _limit_hint(cfg, max(lengths.values())),
    )


def _finish_transcript(ep: Episode, tr: Transcript) -> None:
    """Store the whole sequence with a mask on the student's own tokens and their turn index."""
    n = max((t.offset + len(t.response_ids) for t in ep.turns), default=0)
    ids = tr.ids[:n] if ep.turns else list(tr.ids)
    mask = [0] * len(ids)
    turn_index = [-1] * len(ids)
    for k, t in enumerate(ep.turns):
        for j in range(t.offset, t.offset + len(t.response_ids)):
            mask[j] = 1
            turn_index[j] = k
    ep.sequence_ids, ep.student_mask, ep.turn_index = ids, mask, turn_index
