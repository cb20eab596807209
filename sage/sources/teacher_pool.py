"""``data.source: teacher`` with ``data.teacher_pool``: each epoch draws ``data.train_games`` episodes from a
pool the frozen teacher played once (`sage.teacher_pool`), instead of replaying the teacher every epoch."""

from __future__ import annotations

from sage import teacher_pool
from sage.distributed import shard, world
from sage.sources.base import Source


class TeacherPoolDraws(Source):
    def __init__(self) -> None:
        super().__init__()
        self.pool: teacher_pool.TeacherPool | None = None

    def games(self, ctx, epoch):
        return []  # nothing is played per epoch

    def episodes(self, ctx, epoch, games, resume=None):
        if self.pool is None:  # the teacher is frozen: one load (and one digest of it) per run
            self.pool = teacher_pool.load_or_build(
                ctx.teacher_pool, teacher=ctx.teacher, tokenizer=ctx.tokenizer, env_pool=ctx.pool, prompt=ctx.prompt,
                rollout=ctx.rollout, max_turns=ctx.max_turns, split=ctx.train_split, data_root=ctx.data_root,
                won_only=ctx.teacher_won_only, stop=ctx.stop)
        self.stats = {"teacher_pool_episodes": float(len(self.pool.episodes)),
                      "teacher_pool_win_rate": self.pool.win_rate}
        return shard(teacher_pool.draw(self.pool.episodes, ctx.train_games, ctx.seed, epoch), *world())
