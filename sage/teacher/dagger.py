"""``data.source: dagger``: teacher training data, one round per epoch (`DaggerSpec`). Round r plays its own
block of train games with the expert/noise/model mix of that round (`sage.teacher.rounds.collect_round`),
the model being trained acting greedily for its share of turns and judging its examples' prompts."""

from __future__ import annotations

import random

from sage import preemption
from sage.distill.judge import TeacherJudge
from sage.distributed import shard, world
from sage.envs import find_games
from sage.rollout.loop import RolloutStopped
from sage.sources.base import Source
from sage.specs import GateSpec
from sage.teacher.policy import Mix
from sage.teacher.rounds import collect_round


class DaggerRounds(Source):
    tracks_expert = True  # the expert's next action is both a policy choice and the offline judge label

    def games(self, ctx, epoch):
        """Disjoint blocks of one seeded permutation of the split: every round plays new games."""
        games = find_games(ctx.train_split, ctx.data_root)
        random.Random(ctx.seed).shuffle(games)
        d = ctx.dagger
        sizes = [d.at(r, d.games) for r in range(epoch + 1)]
        games = games[sum(sizes[:-1]) % len(games):][: sizes[-1]]
        return shard(games, *world())

    def episodes(self, ctx, epoch, games, resume=None):
        d, model, tokenizer = ctx.dagger, ctx.student, ctx.tokenizer
        mix = Mix(model=d.at(epoch, d.model_share), random=d.random, invalid=d.invalid, repeat=d.repeat,
                  malformed=d.at(epoch, d.malformed))
        judge = TeacherJudge(GateSpec(labels=d.judge_labels, judge_history=d.judge_history), model, tokenizer)
        try:
            episodes, self.stats = collect_round(
                games=games, pool=ctx.pool, prompt=ctx.prompt, tokenizer=tokenizer, rollout_spec=ctx.rollout, mix=mix,
                answer=ctx.prompt.template.expert_answer, judge=judge, judge_examples=d.at(epoch, d.judge_examples),
                model=model, seed=ctx.play_seed(epoch), games_per_rollout=ctx.games_per_rollout,
                label=f"teacher data round {epoch}", stop=ctx.stop, judge_weight=d.at(epoch, d.judge_weight))
        except RolloutStopped:  # the round is seeded: a resumed run replays it whole, the same
            raise preemption.Preempted(f"in teacher data round {epoch} (replayed from its start on resume)") from None
        return episodes
