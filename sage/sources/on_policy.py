"""``data.source: on_policy``: the student being trained plays the epoch's games (sampled)."""

from __future__ import annotations

from sage.sources.base import Source


class OnPolicy(Source):
    def episodes(self, ctx, epoch, games, resume=None):
        return ctx.player.play(ctx.student, ctx.tokenizer, games, greedy=False, seed=ctx.play_seed(epoch),
                               resume=resume)
