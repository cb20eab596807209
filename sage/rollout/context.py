"""The context mode, decided once: what the policy sees each turn, how a turn is recorded, and how a
played episode becomes scored rows. Chosen from ``data.rollout.context_mode`` by `context_for`; the
rollout loop (`sage.rollout.loop`) and the row builder (`sage.scoring.episode_rows`) ask it and never
test the mode themselves.

- `WindowContext` (verl-agent style): each turn is a fresh prompt (task, last N observation/action
  pairs, current observation, admissible actions). Over-long prompts: the history window is shortened,
  then the prompt is left-truncated to ``max_context_tokens`` (``Episode.truncated`` records it). A turn
  keeps its exact context (``Turn.context_ids``) and is one row: context, then response.
- `TranscriptContext` (verl agent-loop style): the episode is one append-only chat; the generator keeps
  the episode's KV cache so only new tokens are prefilled. An episode whose transcript plus the next
  answer would exceed ``max_context_tokens`` ends there, not won, with ``Episode.truncated`` set. The
  episode keeps its whole sequence (``Episode.sequence_ids``, the student's tokens marked) and is one row.

A limit below the first prompt: window left-truncates it (the task text may be cut; the loop logs a
warning); transcript ends such an episode before its first turn (no turns, truncated) with a warning,
and raises `ContextLimitError` when no game of the rollout fits, since nothing could be played.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sage.envs import PromptBuilder
from sage.errors import InputError
from sage.rollout.chat import ChatCodec, Transcript
from sage.rollout.generation import Generator
from sage.rollout.records import Episode, Turn
from sage.scoring import EpisodeRow
from sage.specs import RolloutSpec

log = logging.getLogger(__name__)


class ContextLimitError(InputError, ValueError):
    """``max_context_tokens`` leaves no room for any game's first prompt (transcript mode)."""


@dataclass
class Slot:
    """One game of a rollout while it is played: its episode so far and what the policy acts on next."""

    episode: Episode
    observation: str
    admissible: list[str]
    history: list[tuple[str, str]]
    chat: Transcript | None = None  # transcript mode: the episode's growing chat
    done: bool = False
    state: object = None  # the latest StepResult (its privileged expert fields label the next turn)


class Context(Protocol):
    """What the rollout loop and the row builder ask of a context mode (`WindowContext` shows each one)."""

    name: str
    keep_cache: bool  # the generator keeps each episode's session (its KV cache) from turn to turn

    def begin(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, task: str) -> None: ...
    def playable(self, slots: Sequence[Slot], active: list[int], policy: Generator, cfg: RolloutSpec,
                 first_turn: bool) -> list[int]: ...
    def prompt(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, cfg: RolloutSpec,
               overflow: dict[str, int]) -> list[int]: ...
    def recorded(self, prompt_ids: list[int]) -> tuple[list[int], int]: ...
    def advance(self, slot: Slot, response_ids: list[int], ended: bool, prompt: PromptBuilder) -> None: ...
    def release(self, policy: Generator, ended: list[int]) -> None: ...
    def finish(self, slot: Slot) -> None: ...
    def rows(self, episode: Episode, index: int) -> list[EpisodeRow]: ...


def limit_hint(cfg: RolloutSpec, longest: int) -> str:
    return (f"max_context_tokens={cfg.max_context_tokens} minus max_new_tokens={cfg.max_new_tokens} leaves "
            f"{cfg.max_context_tokens - cfg.max_new_tokens} prompt tokens; set data.rollout.max_context_tokens "
            f">= {longest + cfg.max_new_tokens} to avoid this")


class WindowContext:
    name = "window"
    keep_cache = False  # every prompt is new: the generator keeps no session

    def begin(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, task: str) -> None:
        """Nothing to set up: each turn's prompt is built from the slot's state."""

    def playable(self, slots: Sequence[Slot], active: list[int], policy: Generator, cfg: RolloutSpec,
                 first_turn: bool) -> list[int]:
        return active  # a prompt too long is shortened, never refused

    def prompt(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, cfg: RolloutSpec,
               overflow: dict[str, int]) -> list[int]:
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

    def recorded(self, prompt_ids: list[int]) -> tuple[list[int], int]:
        """(``Turn.context_ids``, ``Turn.offset``) of a turn played on ``prompt_ids``: the exact context."""
        return list(prompt_ids), -1

    def advance(self, slot: Slot, response_ids: list[int], ended: bool, prompt: PromptBuilder) -> None:
        """Nothing to carry: the next prompt is built afresh."""

    def release(self, policy: Generator, ended: list[int]) -> None:
        """No session was kept."""

    def finish(self, slot: Slot) -> None:
        """Every turn already holds its context."""

    def rows(self, episode: Episode, index: int) -> list[EpisodeRow]:
        """One row per turn: the context the policy saw, then its response."""
        return [self.turn_row(t, index, k) for k, t in enumerate(episode.turns)]

    @staticmethod
    def turn_row(turn: Turn, episode: int, k: int) -> EpisodeRow:
        n, c = len(turn.response_ids), len(turn.context_ids)
        if n and not c:
            raise ValueError(f"turn {k} of {turn.game_id} has no context_ids: it was not played in window mode "
                             "(a transcript episode's rows come from its sequence_ids)")
        return EpisodeRow(list(turn.context_ids) + list(turn.response_ids), list(range(c, c + n)), episode, (k,), [k] * n)


class TranscriptContext:
    name = "transcript"
    keep_cache = True  # each prompt extends the last: the generator keeps every episode's KV cache

    def begin(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, task: str) -> None:
        slot.chat = Transcript.start(codec, prompt.transcript_first(task, slot.observation, slot.admissible))

    def playable(self, slots: Sequence[Slot], active: list[int], policy: Generator, cfg: RolloutSpec,
                 first_turn: bool) -> list[int]:
        """The active games whose chat leaves room for one more answer; the others end here, truncated.
        Before the first turn, episodes whose first prompt does not fit are named in a warning; when none
        fits, nothing can be played and `ContextLimitError` says so."""
        keep, drop = [], []
        for i in active:
            if len(slots[i].chat.ids) + cfg.max_new_tokens > cfg.max_context_tokens:
                slots[i].done = True
                slots[i].episode.truncated = True
                drop.append(i)
            else:
                keep.append(i)
        if drop:
            policy.end_sessions(drop)
        if first_turn and drop:
            self._first_prompt_overflow(slots, active, drop, keep, cfg)
        return keep

    @staticmethod
    def _first_prompt_overflow(slots: Sequence[Slot], active: list[int], dropped: list[int], kept: list[int],
                               cfg: RolloutSpec) -> None:
        lengths = {slots[i].episode.game_id: len(slots[i].chat.ids) for i in dropped}
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
            limit_hint(cfg, max(lengths.values())),
        )

    def prompt(self, slot: Slot, prompt: PromptBuilder, codec: ChatCodec, cfg: RolloutSpec,
               overflow: dict[str, int]) -> list[int]:
        return slot.chat.ids

    def recorded(self, prompt_ids: list[int]) -> tuple[list[int], int]:
        """The context is the episode's sequence up to the response (storing every prefix would cost
        O(turns^2) memory): no ``context_ids``, the response's ``offset`` in the sequence."""
        return [], len(prompt_ids)

    def advance(self, slot: Slot, response_ids: list[int], ended: bool, prompt: PromptBuilder) -> None:
        """The chat gets the answer and, unless the game ended, the environment's feedback (the slot's
        observation and admissible actions, already the new ones)."""
        slot.chat.add_response(response_ids)
        if not ended:
            slot.chat.add_user(prompt.transcript_feedback(slot.observation, slot.admissible))

    def release(self, policy: Generator, ended: list[int]) -> None:
        policy.end_sessions(ended)

    def finish(self, slot: Slot) -> None:
        """Store the whole sequence with a mask on the student's own tokens and their turn index."""
        if slot.chat is None:  # ended at reset: nothing was played
            return
        ep, tr = slot.episode, slot.chat
        n = max((t.offset + len(t.response_ids) for t in ep.turns), default=0)
        ids = tr.ids[:n] if ep.turns else list(tr.ids)
        mask = [0] * len(ids)
        turn_index = [-1] * len(ids)
        for k, t in enumerate(ep.turns):
            for j in range(t.offset, t.offset + len(t.response_ids)):
                mask[j] = 1
                turn_index[j] = k
        ep.sequence_ids, ep.student_mask, ep.turn_index = ids, mask, turn_index

    def rows(self, episode: Episode, index: int) -> list[EpisodeRow]:
        """One row per episode: its whole sequence, the student's tokens scored. Checks that the marked
        tokens of each turn are exactly its response at its offset (a turn may be wholly unmarked: the
        teacher recipe keeps only the expert's turns)."""
        ep = episode
        if ep.sequence_ids is None:
            if ep.turns:
                raise ValueError(f"episode {ep.game_id} has no sequence_ids: it was not played in transcript mode")
            return []  # ended at reset: nothing was played
        if ep.student_mask is None or ep.turn_index is None:
            raise ValueError(f"episode {ep.game_id} has sequence_ids but no student_mask/turn_index")
        positions = [j for j, m in enumerate(ep.student_mask) if m]
        if positions and positions[0] < 1:
            raise ValueError(f"episode {ep.game_id}: a student token at position 0 has no context")
        row = EpisodeRow(list(ep.sequence_ids), positions, index, tuple(range(len(ep.turns))),
                         [ep.turn_index[j] for j in positions])
        for k, a, b in row.spans():
            if not 0 <= k < len(ep.turns):
                raise ValueError(f"episode {ep.game_id}: a student token at position {positions[a]} belongs to no turn")
            t = ep.turns[k]
            n = len(t.response_ids)
            span = positions[a] == t.offset and positions[b - 1] == t.offset + n - 1
            if b - a != n or not span or ep.sequence_ids[t.offset : t.offset + n] != list(t.response_ids):
                raise ValueError(f"episode {ep.game_id} turn {k}: {b - a} student tokens from position {positions[a]} "
                                 f"in the sequence, but {n} response_ids at offset {t.offset}")
        return [row]


CONTEXTS: dict[str, Context] = {"window": WindowContext(), "transcript": TranscriptContext()}


def context_for(mode: str | bool | Context) -> Context:
    """The context of ``data.rollout.context_mode`` (a bool: transcript or not; a context: itself)."""
    if isinstance(mode, bool):
        return CONTEXTS["transcript" if mode else "window"]
    return CONTEXTS[mode] if isinstance(mode, str) else mode


def recorded_context(episodes: Sequence[Episode]) -> Context:
    """The context episodes were played in, read from their records, for those that reach a reader without
    the config (the evaluation KL): transcript when any holds its sequence."""
    return CONTEXTS["transcript" if any(ep.sequence_ids is not None for ep in episodes) else "window"]
