"""``data.source: teacher``: the frozen teacher plays the epoch's games (sampled), for SFT on its
trajectories; with ``data.teacher_won_only`` only the games it won are trained on."""

from __future__ import annotations

from sage.sources.base import Source


class TeacherPlay(Source):
    def episodes(self, ctx, epoch, games, resume=None):
        if ctx.teacher is None:
            raise ValueError("data.source=teacher needs model.teacher")
        return ctx.player.play(ctx.teacher, ctx.tokenizer, games, greedy=False, seed=ctx.play_seed(epoch),
                               resume=resume)

    def kept(self, ctx, episode):
        return episode.won or not ctx.teacher_won_only
