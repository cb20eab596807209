"""The data sources (`sage.sources`): one class per ``data.source``, registered by name, fed by the DataModule
through a `SourceContext`; DAgger's rounds (`sage.teacher.dagger`) played through the DataModule."""

from __future__ import annotations

import pytest

from sage import preemption
from sage.data import SageDataModule
from sage.distill.judge import TeacherJudge
from sage.envs import EnvPool
from sage.sources import Source
from sage.sources.registry import SOURCES, make_source
from sage.sources.teacher_pool import TeacherPoolDraws
from sage.specs import DATA_SOURCES, DaggerSpec, GateSpec, RolloutSpec, SpecError, TeacherPoolSpec
from sage.teacher.policy import Mix
from sage.teacher.rounds import collect_round
from tests.helpers import tiny_model, tiny_tokenizer

MAX_TURNS = 3
SPEC = RolloutSpec(context_mode="transcript", max_new_tokens=8)


def test_every_configurable_source_is_registered_once():
    assert tuple(SOURCES) == DATA_SOURCES and all(issubclass(c, Source) for c in SOURCES.values())
    assert type(make_source("teacher")) is SOURCES["teacher"]
    assert isinstance(make_source("teacher", TeacherPoolSpec(file="pool.jsonl")), TeacherPoolDraws)
    with pytest.raises(SpecError, match=r"^data.source='web'; allowed: on_policy, expert, teacher, dagger$"):
        make_source("web")


def test_dagger_rounds_play_disjoint_blocks_of_the_split(bundled_data_root):
    dm = SageDataModule(source="dagger", dagger=DaggerSpec(games=[3, 2]), data_root=bundled_data_root)
    games = [[g.game_id for g in dm.source.games(dm._context(), r)] for r in range(3)]
    assert [len(g) for g in games] == [3, 2, 2] and not set(games[0]) & set(games[1])
    assert dm.track_expert  # the expert labels every turn offline
    on_policy = SageDataModule(data_root=bundled_data_root, train_games=4)
    assert not on_policy.track_expert and len(on_policy.source.games(on_policy._context(), 0)) == 4


@pytest.fixture(scope="module")
def dagger_dm(bundled_data_root):
    spec = DaggerSpec(games=[2], model_share=[0.0], judge_examples=[3], random=0.2)
    dm = SageDataModule(source="dagger", dagger=spec, data_root=bundled_data_root, rollout=SPEC, max_turns=MAX_TURNS)
    with EnvPool(num_workers=1, max_steps=MAX_TURNS, expert=True) as pool:
        dm.pool = pool
        dm.connect(tiny_model(), None, tiny_tokenizer(), None, "opd")
        yield dm


def test_a_dagger_round_through_the_datamodule_is_its_collect_round(dagger_dm):
    """The source hands `collect_round` the round's settings; the DataModule keeps its statistics."""
    dm = dagger_dm
    episodes = dm.collect(0)
    games = dm.source.games(dm._context(), 0)
    d = dm.dagger
    judge = TeacherJudge(GateSpec(labels=d.judge_labels, judge_history=d.judge_history), dm.student, dm.tokenizer)
    direct, stats = collect_round(
        games=games, pool=dm.pool, prompt=dm.prompt, tokenizer=dm.tokenizer, rollout_spec=SPEC,
        mix=Mix(model=0.0, random=0.2, invalid=d.invalid, repeat=d.repeat), answer=dm.prompt.template.expert_answer,
        judge=judge, judge_examples=3, model=dm.student, seed=dm.seed, games_per_rollout=None)
    assert [(e.game_id, e.sequence_ids, e.student_mask) for e in episodes] == [
        (e.game_id, e.sequence_ids, e.student_mask) for e in direct]
    assert dm.source.stats == stats and stats["data/games"] == 2.0


def test_a_sigterm_inside_a_dagger_round_replays_the_round(dagger_dm, monkeypatch):
    """The round stops at a turn boundary (the player's stop check), and says the resume replays it."""
    monkeypatch.setattr("sage.data.stop_at_turn", lambda: True)
    with pytest.raises(preemption.Preempted, match=r"in teacher data round 0 \(replayed from its start on resume\)"):
        dagger_dm.collect(0)
