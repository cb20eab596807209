"""Plays ALFWorld games with a policy model: the environment pool, the prompt and the rollout spec.

The DataModule owns one `Player` (its environment workers) and calls it with the connected student for
training rollouts and evaluation. The policy model is always an argument: nothing here reaches into the
module or the trainer. ``stop`` (set by the DataModule: SIGTERM, `sage.preemption`) ends a play at a
turn boundary with `PlayStopped`, whose `PartialPlay` a later ``play(..., resume=...)`` continues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sage.envs import EnvPool, GameInfo, PromptBuilder
from sage.envs.lost import lost, lost_line
from sage.preemption import Preempted, stop_now, work_started
from sage.progress import Phase, say
from sage.rollout.engines import make_generator
from sage.rollout.generation import GenerationStats
from sage.rollout.loop import PartialRollout, RolloutStopped, rollout
from sage.rollout.records import Episode
from sage.specs import RolloutSpec


@dataclass
class PartialPlay:
    """A play stopped at a turn boundary: the episodes of its finished rollout streams and the stream
    that was playing."""

    finished: list[Episode]
    current: PartialRollout

    @property
    def turns(self) -> int:
        return sum(ep.length for ep in [*self.finished, *self.current.episodes])


def stop_at_turn() -> bool:
    """The DataModule's `Player.stop`, checked at every turn boundary: once turns are being played there is
    work to keep, so SIGTERM from here on stops at a boundary instead of at once (`sage.preemption`)."""
    work_started()
    return stop_now()


class PlayStopped(Preempted):
    def __init__(self, partial: PartialPlay, label: str) -> None:
        super().__init__(f"in the {label} rollout after {partial.turns} turns")
        self.partial = partial


@dataclass
class Player:
    pool: EnvPool
    prompt: PromptBuilder
    spec: RolloutSpec
    games_per_rollout: int | None = None  # games played together in one rollout stream (None: all at once)
    stats: GenerationStats = field(default_factory=GenerationStats)  # work of the latest play
    stop: Callable[[], bool] | None = None  # checked at every turn boundary (see the module docstring)

    def play(self, policy, tokenizer, games: list[GameInfo], greedy: bool, seed: int = 0,
             label: str = "rollout", resume: PartialPlay | None = None) -> list[Episode]:
        """Every game to its end with `policy` (eval mode while playing), `games_per_rollout` at a time; the
        progress display shows turn, games still active and generated tokens/s under `label`.
        ``resume``: a `PartialPlay` of these games, continued where it stopped."""
        was_training = policy.training
        policy.eval()
        gen = make_generator(self.spec.engine, policy, tokenizer, seed=seed, max_model_len=self.spec.max_context_tokens)
        self.stats = gen.stats
        size = self.games_per_rollout or max(1, len(games))
        streams = -(-len(games) // size)
        phase = Phase(label, total=self.pool.max_steps * streams, unit="turn")

        def on_turn(turn: int, active: int) -> None:
            phase.update(1, games=active, tok_s=f"{gen.stats.generated_tokens / max(phase.seconds, 1e-9):.0f}")

        episodes: list[Episode] = list(resume.finished) if resume is not None else []
        try:
            with phase:
                for i in range(len(episodes), len(games), size):
                    partial = resume.current if resume is not None and i == len(resume.finished) else None
                    try:
                        episodes += rollout(gen, self.pool, games[i : i + size], self.prompt, tokenizer, self.spec,
                                            greedy=greedy, on_turn=on_turn, stop=self.stop, resume=partial)
                    except RolloutStopped as stopped:
                        raise PlayStopped(PartialPlay(episodes, stopped.partial), label) from None
                turns = sum(ep.length for ep in episodes)
                phase.close(f"{len(episodes)} games, {turns} turns, {sum(ep.success for ep in episodes)} won, "
                            f"{gen.stats.generated_tokens} tokens ({gen.stats.generated_tokens / phase.seconds:.0f}/s)")
        finally:
            policy.train(was_training)
        return episodes

    def evaluate(self, policy, tokenizer, games: list[GameInfo], label: str) -> list[Episode]:
        """Evaluation play: every game greedily (none: no work at all); the episodes lost to the environment
        are said here and judged by the evaluation callback at the split's end."""
        if not games:
            return []
        episodes = self.play(policy, tokenizer, games, greedy=True, label=label)
        if gone := lost(episodes):
            say(lost_line(label, len(gone), len(episodes), gone[0].error))
        return episodes
