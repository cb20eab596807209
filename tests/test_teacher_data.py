"""Teacher data (data.source: dagger): the expert fix, the offline label rule, the expert/noise/model mix
and the training episodes it serves, on real bundled ALFWorld games."""

from __future__ import annotations

import pytest

from sage.distill.judge import TeacherJudge
from sage.envs import AlfworldEnv, PromptBuilder, PromptTemplate
from sage.envs import alfworld_env as env_module
from sage.rollout.generation import HFGenerator
from sage.specs import GateSpec, RolloutSpec
from sage.teacher.labels import offline_label, offline_labels
from sage.teacher.policy import Mix
from sage.teacher.rounds import collect_round
from tests.helpers import make_turn, tiny_model, tiny_tokenizer

ANSWER = "<action>{action}</action>"
MAX_TURNS = 30
PROMPT = PromptBuilder(PromptTemplate(transcript_feedback="Observation:\n{observation}"))
SPEC = RolloutSpec(context_mode="transcript", max_new_tokens=12, max_context_tokens=4096)


def _follow_expert(game) -> bool:
    env = AlfworldEnv(max_steps=MAX_TURNS, expert=True)
    try:
        res = env.reset(game)
        while not res.done and res.expert_action is not None:
            res = env.step(res.expert_action)
        return res.won
    finally:
        env.close()


def test_the_hand_coded_expert_wins_pick_two_games_with_the_fix(bundled_games, monkeypatch):
    game = next(g for g in bundled_games["train"] if g.task_type == "pick_two_obj_and_place")
    assert _follow_expert(game)
    # without the fix alfworld 0.4.2's expert never puts the second object down
    monkeypatch.setattr(env_module, "_expert_view", lambda action: action)
    assert not _follow_expert(game)


@pytest.mark.parametrize(
    ("fields", "previous", "label"),
    [
        ({"action": "go to desk 1", "expert_action": "go to desk 1", "subgoal_before": 0, "subgoal_after": 0}, None,
         "SKIP"),
        ({"action": "take mug 1 from desk 1", "expert_action": "take mug 2 from desk 1", "subgoal_before": 0,
          "subgoal_after": 1}, None, "SKIP"),  # another route that progresses
        ({"action": "go to bed 1", "expert_action": "go to desk 1", "subgoal_before": 0, "subgoal_after": 0}, None,
         "WEAK"),  # a detour
        ({"action": "take pen 1 from bed 1", "feedback": "Nothing happens.", "expert_action": "take pen 1 from bed 1"},
         None, "STRONG"),  # even the expert's command fails when the engine refuses it
        ({"action": "look", "feedback": "You see a bed.", "expert_action": "go to desk 1"},
         {"action": "look", "feedback": "You see a bed."}, "STRONG"),  # a repeat that learns nothing
        ({"action": "move mug 1 to bed 1", "expert_action": "go to desk 1", "subgoal_before": 2, "subgoal_after": 0},
         None, "STRONG"),  # the task object put down elsewhere
        ({"action": "", "valid_format": False, "expert_action": "go to desk 1"}, None, "STRONG"),
    ],
)
def test_offline_label_rule(fields, previous, label):
    base = {"feedback": "You arrive at desk 1."}
    turn = make_turn(**{**base, **fields})
    prev = make_turn(**{**base, **previous}) if previous else None
    assert offline_label(turn, prev) == label


def _round(pool, mix, games, judge_examples=6, model=None, seed=0, stop=None, judge_weight=1.0):
    tok = tiny_tokenizer()
    judge_model = model if model is not None else tiny_model()
    judge = TeacherJudge(GateSpec(), judge_model, tok)
    gen = HFGenerator(model, tok, seed=seed) if model is not None else None
    return collect_round(games=games, pool=pool, prompt=PROMPT, tokenizer=tok, rollout_spec=SPEC, mix=mix,
                         answer=ANSWER, judge=judge, judge_examples=judge_examples, model=gen and model, seed=seed,
                         games_per_rollout=None, stop=stop, judge_weight=judge_weight), tok


@pytest.fixture(scope="module")
def expert_pool():
    from sage.envs import EnvPool

    with EnvPool(num_workers=2, max_steps=MAX_TURNS, expert=True) as p:
        yield p


def test_a_round_stops_at_a_turn_boundary(expert_pool, bundled_games):
    """SIGTERM during a round (``stop`` true from turn 2 on) ends it there, as every rollout does."""
    from sage.rollout.loop import RolloutStopped

    games = bundled_games["train"][:2]
    turns = []
    with pytest.raises(RolloutStopped) as stopped:
        _round(expert_pool, Mix(), games, stop=lambda: turns.append(1) or len(turns) > 2)
    assert stopped.value.partial.turn == 2


def test_judge_examples_carry_their_loss_weight_into_the_samples(expert_pool, bundled_games):
    """data.dagger.judge_weight scales a judge example's label tokens (gate x weight in its sample), and
    nothing else: acting turns keep weight 1."""
    from sage.samples import transcript_samples

    games = [g for g in bundled_games["train"] if g.task_type == "pick_and_place_simple"][:2]
    (episodes, _), _ = _round(expert_pool, Mix(random=0.3), games, judge_examples=4, judge_weight=20.0)
    judges = [e for e in episodes if e.split == "judge"]
    assert judges and all(t.weight == 20.0 for e in judges for t in e.turns)
    assert all(t.weight == 1.0 for e in episodes if e.split != "judge" for t in e.turns)
    for e, s in zip(episodes, transcript_samples(episodes), strict=True):
        trained = {g for g, m in zip(s.gate, s.loss_mask, strict=True) if m}
        assert trained == ({20.0} if e.split == "judge" else {1.0})


def test_noisy_expert_round_trains_only_the_expert_turns(expert_pool, bundled_games):
    games = [g for g in bundled_games["train"] if g.task_type == "pick_and_place_simple"][:3]
    (episodes, stats), tok = _round(expert_pool, Mix(random=0.3, invalid=0.15, repeat=0.15), games)
    policy = [e for e in episodes if e.split != "judge"]
    judges = [e for e in episodes if e.split == "judge"]
    assert policy and all(e.won for e in policy)
    noise_turns = 0
    for ep in policy:
        for t in ep.turns:
            trained = t.response_text == ANSWER.format(action=t.expert_action)
            noise_turns += not trained
            span = ep.student_mask[t.offset : t.offset + len(t.response_ids)]
            assert span == [int(trained)] * len(t.response_ids)
        assert sum(ep.student_mask) == sum(len(t.response_ids) for t in ep.turns
                                           if t.response_text == ANSWER.format(action=t.expert_action))
    assert noise_turns > 0  # 60% noise over several games: some turns are untrained context
    assert 0 < stats["data/source_expert"] < 1 and stats["data/expert_turns_trained"] > 0
    # judge examples: the judge's own prompt, then the offline label's tokens, the only trained ones
    assert len(judges) == 6 and {e.turns[0].response_text for e in judges} <= {"SKIP", "WEAK", "STRONG"}
    for e in judges:
        n = len(e.turns[0].response_ids)
        assert e.student_mask == [0] * (len(e.sequence_ids) - n) + [1] * n
        assert tok.decode(e.sequence_ids[-n:]).strip() == e.turns[0].response_text
        assert "Environment feedback after the student's action" in tok.decode(e.sequence_ids[:-n])


def test_dagger_round_lets_the_model_act_and_never_trains_its_own_deviations(expert_pool, bundled_games):
    games = [g for g in bundled_games["train"] if g.task_type == "look_at_obj_in_light"][:2]
    model = tiny_model(seed=1)
    (episodes, stats), _ = _round(expert_pool, Mix(model=0.5), games, judge_examples=4, model=model)
    assert stats["data/source_model"] > 0.2
    for ep in (e for e in episodes if e.split != "judge"):
        for t in ep.turns:  # a random tiny model never writes the expert's exact answer
            if t.response_text != ANSWER.format(action=t.expert_action):
                assert not any(ep.student_mask[t.offset : t.offset + len(t.response_ids)])
    labels = [lab for e in episodes if e.split != "judge" for lab in offline_labels(e)]
    assert set(labels) <= {"SKIP", "WEAK", "STRONG"}


def test_malformed_answers_never_parse_and_come_in_every_form():
    import random

    from sage.envs import StepResult, parse_action
    from sage.teacher.policy import malformed_answer

    tok, rng = tiny_tokenizer(), random.Random(0)
    state = StepResult("You are in the middle of a room. Looking around you, you see a desk 1 and a bed 1.",
                       ["go to desk 1", "go to bed 1", "help"], False, False, 0, "put a pen on the bed.",
                       expert_action="go to desk 1")
    texts = [malformed_answer(rng, state, tok) for _ in range(200)]
    assert all(t.strip() and not parse_action(t).valid for t in texts)
    assert "go to desk 1" in texts and "<action>go to desk 1" in texts
    assert any(t in state.observation and t.count(" ") >= 2 for t in texts)  # copied observation text
    assert any(t not in state.observation and "go to" not in t for t in texts)  # random tokens


def test_malformed_turns_stay_untrained_and_are_strong_judge_examples(expert_pool, bundled_games):
    games = [g for g in bundled_games["train"] if g.task_type == "pick_and_place_simple"][:2]
    (episodes, stats), tok = _round(expert_pool, Mix(malformed=0.3), games, judge_examples=30)
    assert stats["data/source_malformed"] > 0.1
    policy = [e for e in episodes if e.split != "judge"]
    bad = [(e, t) for e in policy for t in e.turns if not t.valid_format]
    assert bad and all(t.feedback.startswith("Nothing happens") for _, t in bad)
    assert all(not any(e.student_mask[t.offset : t.offset + len(t.response_ids)]) for e, t in bad)
    assert all(offline_labels(e)[t.index] == "STRONG" for e, t in bad)
    judged = [e for e in episodes if e.split == "judge" and e.turns[0].response_text == "STRONG"]
    assert judged  # balanced picks: the STRONG examples come from the malformed turns (the only failures)
