"""Plays ALFWorld games with a policy model: the environment pool, the prompt and the rollout spec.

The DataModule owns one `Player` (its environment workers) and calls it with the connected student for
training rollouts and evaluation. The policy model is always an argument: nothing here reaches into the
module or the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage.envs import EnvPool, GameInfo, PromptBuilder
from sage.progress import Phase
from sage.rollout.generation import GenerationStats, HFGenerator
from sage.rollout.loop import rollout
from sage.rollout.records import Episode
from sage.specs import RolloutSpec


@dataclass
class Player:
    pool: EnvPool
    prompt: PromptBuilder
    spec: RolloutSpec
    batch: int | None = None  # games played together in one rollout stream (None: all at once)
    stats: GenerationStats = field(default_factory=GenerationStats)  # work of the latest play

    def play(self, policy, tokenizer, games: list[GameInfo], greedy: bool, seed: int = 0,
             label: str = "rollout") -> list[Episode]:
        """Every game to its end with `policy` (eval mode while playing), `batch` games at a time; the
        progress display shows turn, games still active and generated tokens/s under `label`."""
        was_training = policy.training
        policy.eval()
        gen = HFGenerator(policy, tokenizer, seed=seed)
        self.stats = gen.stats
        size = self.batch or max(1, len(games))
        streams = -(-len(games) // size)
        phase = Phase(label, total=self.pool.max_steps * streams, unit="turn")

        def on_turn(turn: int, active: int) -> None:
            phase.update(1, games=active, tok_s=f"{gen.stats.generated_tokens / max(phase.seconds, 1e-9):.0f}")

        episodes: list[Episode] = []
        try:
            with phase:
                for i in range(0, len(games), size):
                    episodes += rollout(gen, self.pool, games[i : i + size], self.prompt, tokenizer, self.spec,
                                        greedy=greedy, on_turn=on_turn)
                turns = sum(ep.length for ep in episodes)
                phase.close(f"{len(episodes)} games, {turns} turns, {sum(ep.success for ep in episodes)} won, "
                            f"{gen.stats.generated_tokens} tokens ({gen.stats.generated_tokens / phase.seconds:.0f}/s)")
        finally:
            policy.train(was_training)
        return episodes
