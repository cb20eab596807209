"""One definition of a repeated turn (`sage.rollout.records.is_repeat`), asked by its three readers: the
repeat rates (`repeat_flags`: train/ and val/ repeat_rate, the game records' "repeat"), the
``feedback_rule`` gate and the offline judge labels. Before they shared it, the labels also demanded the
same feedback and compared raw strings, and the rates compared raw strings; these tests fail if any of the
three decides a repeat its own way again."""

from __future__ import annotations

import itertools

import pytest

from sage.distill.gate import FeedbackRule
from sage.envs import AlfworldEnv, normalize_command
from sage.rollout.records import is_repeat, repeat_flags
from sage.specs import INTERVENE, SKIP, STRONG, WEAK
from sage.teacher.labels import offline_label, offline_labels
from tests.helpers import make_episode, make_turn

ACTIONS = ["look", " Look ", "LOOK", "go to desk 1", "go  to desk 1", "examine desk 1", ""]
FEEDBACKS = ["You see a bed.", "On the desk 1, you see a pen 1."]  # neither says the action failed


def _turn(index: int, action: str, feedback: str):
    """A turn that only the repeat rule can flag: parsed exactly when the action is non-empty (as
    `parse_action` gives it), a feedback that is no failure, and no expert facts (else WEAK)."""
    return make_turn(index, action=action, feedback=feedback, valid_format=bool(normalize_command(action)))


def _verdicts(previous, turn) -> dict[str, bool]:
    """The repeat verdict of turn 1 of the episode (previous, turn), as each reader sees it."""
    ep = make_episode([previous, turn])
    FeedbackRule().judge([ep])
    return {"is_repeat": is_repeat(turn, previous), "repeat_flags": bool(repeat_flags(ep)[1]),
            "feedback_rule": ep.turns[1].gate_label == INTERVENE, "offline_label": offline_label(turn, previous) == STRONG}


@pytest.mark.parametrize(("prev_action", "action"), list(itertools.product(ACTIONS, ACTIONS)))
@pytest.mark.parametrize("same_feedback", [True, False])
def test_the_three_readers_agree_on_every_pair_of_turns(prev_action, action, same_feedback):
    previous = _turn(0, prev_action, FEEDBACKS[0])
    turn = _turn(1, action, FEEDBACKS[0] if same_feedback else FEEDBACKS[1])
    expected = bool(normalize_command(action)) and normalize_command(action) == normalize_command(prev_action)
    verdicts = _verdicts(previous, turn)
    if not turn.valid_format:  # an unparsed answer is never a repeat, but the gate and the label flag it anyway
        assert not verdicts["is_repeat"] and not verdicts["repeat_flags"]
        assert verdicts["feedback_rule"] and verdicts["offline_label"]
        return
    assert verdicts == dict.fromkeys(verdicts, expected)
    assert offline_label(turn, previous) == (STRONG if expected else WEAK)


def test_one_looping_episode_gives_the_same_repeats_through_all_three():
    # look, look (the same text), go to desk 1, GO TO desk 1 (refused), an unparsed answer twice, look
    spec = [("look", "You see a bed."), ("look", "You see a bed."), ("go to desk 1", "On the desk 1, you see a pen 1."),
            ("GO  TO desk 1", "Nothing happens."), ("", "Nothing happens."), ("", "Nothing happens."),
            ("look", "You see a bed.")]
    ep = make_episode([_turn(k, a, f) for k, (a, f) in enumerate(spec)])
    flags = repeat_flags(ep)
    assert flags == [0, 1, 0, 1, 0, 0, 0]
    assert flags == [int(is_repeat(t, ep.turns[k - 1] if k else None)) for k, t in enumerate(ep.turns)]
    FeedbackRule().judge([ep])
    labels = offline_labels(ep)  # no expert facts: every turn that is not STRONG is WEAK
    for k, t in enumerate(ep.turns):
        # a repeat is always flagged; the gate and the label add failures and unparsed answers, nothing else
        other = "Nothing happens." in t.feedback or not t.valid_format
        assert (t.gate_label == INTERVENE) == (bool(flags[k]) or other)
        assert (labels[k] == STRONG) == (bool(flags[k]) or other)
    assert labels == [STRONG if t.gate_label == INTERVENE else WEAK for t in ep.turns]


def test_a_repeat_is_strong_even_when_its_feedback_changed_or_it_is_the_experts_action():
    """The case where the labels once differed (they also demanded the same feedback): a repeat with new,
    non-failing feedback. ALFWorld never produces one (`test_alfworld_answers_a_repeat_with_the_same_text_
    or_a_refusal`), so no label of the shipped judge's data changed; the rule says STRONG."""
    previous = make_turn(0, action="examine desk 1", feedback="On the desk 1, you see a pen 1.")
    turn = make_turn(1, action="examine desk 1", feedback="On the desk 1, you see a pen 1 and a mug 1.",
                     expert_action="examine desk 1", subgoal_before=0, subgoal_after=0)
    assert offline_label(turn, previous) == STRONG
    assert offline_label(turn, None) == SKIP  # the same turn without its predecessor: the expert's action
    assert FeedbackRule.intervenes(turn, previous) and not FeedbackRule.intervenes(turn, None)


@pytest.mark.slow
def test_alfworld_answers_a_repeat_with_the_same_text_or_a_refusal(bundled_games):
    """Why a repeat needs no feedback comparison: a command sent twice in a row changes nothing the second
    time (the same text again) or is refused ("Nothing happens."), so it never brings new information."""
    game = next(g for g in bundled_games["train"] if g.task_type == "pick_heat_then_place_in_recep")
    env = AlfworldEnv(max_steps=60, expert=True)
    try:
        res, kinds = env.reset(game), set()
        while not res.done and res.expert_action is not None:
            action = res.expert_action
            first = env.step(action)
            if first.done:
                break
            res = env.step(action)
            assert res.observation in (first.observation, "Nothing happens."), action
            kinds.add(action.split()[0])
            if "heat" in kinds:  # the rest of the game repeats the same kinds of command
                break
        assert {"go", "take", "heat"} <= kinds  # movement, a pick-up and an appliance were each repeated
    finally:
        env.close()
