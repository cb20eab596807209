"""Prompt builder and action parser: hand-written expectations, no model or engine needed."""

from __future__ import annotations

import pytest

from sage.envs import ParsedAction, PromptBuilder, PromptTemplate, parse_action

INTRO = (
    "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
    "you see a desk 1 and a bed 1.\n\nYour task is to: put some book on desk."
)
ADMISSIBLE = ["go to bed 1", "go to desk 1", "help", "inventory", "look"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<think>the book is on the bed</think><action>go to bed 1</action>",
            ParsedAction("go to bed 1", True, "the book is on the bed"),
        ),
        ("<ACTION> Go  to\n desk 1 </Action>", ParsedAction("go to desk 1", True, None)),
        ("< action >look</ action >", ParsedAction("look", True, None)),
        ("Sure! <think>a</think>\n<action>look</action> I hope this helps.", ParsedAction("look", True, "a")),
        (
            "<action>look</action> wait, better: <think>b</think><action>inventory</action>",
            ParsedAction("inventory", True, "b"),
        ),
        ("go to desk 1", ParsedAction("", False, None)),
        ("<think>hmm</think>", ParsedAction("", False, "hmm")),
        ("<think>x</think><action>  \n </action>", ParsedAction("", False, "x")),
        ("<action>go to desk 1", ParsedAction("", False, None)),  # unclosed tag
        ("", ParsedAction("", False, None)),
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


def test_parse_action_require_think():
    assert parse_action("<action>look</action>", require_think=True) == ParsedAction("", False, None)
    assert parse_action("<think></think><action>look</action>", require_think=True).valid


def test_window_messages_first_turn():
    msgs = PromptBuilder().window_messages("put some book on desk.", [], INTRO, ADMISSIBLE)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.startswith("Your task is to: put some book on desk.\nYou are now at step 1 ")
    assert "Welcome" not in user and "you see a desk 1 and a bed 1." in user
    assert "- go to bed 1\n- go to desk 1\n- inventory\n- look\n\n" in user and "- help" not in user
    assert "Prior to this step" not in user
    assert user.endswith("<think>...</think><action>go to desk 1</action>")


def test_window_messages_shows_the_pairs_it_is_given():
    history = [
        (INTRO, "go to bed 1"),
        ("On the bed 1, you see a book 1.", "take book 1 from bed 1"),
        ("You pick up the book 1 from the bed 1.", "go to desk 1"),
    ]
    msgs = PromptBuilder().window_messages(
        "put some book on desk.", history[-2:], "You arrive.", ["look"], step=3
    )
    user = msgs[-1]["content"]
    assert "already taken 3 step(s). Below are the most recent 2 observations" in user
    assert (
        "[Observation 2: On the bed 1, you see a book 1.]\n[Action 2: take book 1 from bed 1]\n"
        "[Observation 3: You pick up the book 1 from the bed 1.]\n[Action 3: go to desk 1]\n\n"
    ) in user
    assert "Action 1:" not in user and "You are now at step 4 " in user
    explicit = PromptBuilder().window_messages("t", history[-1:], "o", ["look"], step=7)
    assert "[Observation 7: " in explicit[-1]["content"] and "step 8 " in explicit[-1]["content"]
    none = PromptBuilder().window_messages("t", [], "o", ["look"], step=3)
    assert "Observation" not in none[-1]["content"]


def test_transcript_messages_and_custom_template():
    template = PromptTemplate(
        system="",
        admissible_item="'{action}'",
        admissible_sep=", ",
        hidden_actions=[],
        transcript_feedback="Obs: {observation} | {admissible}",
    )
    builder = PromptBuilder(template)
    first = builder.transcript_first("put some book on desk.", INTRO, ADMISSIBLE[:2])
    assert [m["role"] for m in first] == ["user"]
    assert first[0]["content"].startswith(
        "Your task is to: put some book on desk.\n\nObservation:\nYou are in"
    )
    assert "'go to bed 1', 'go to desk 1'" in first[0]["content"]
    assert builder.transcript_feedback("Nothing happens.", ["help", "look"]) == {
        "role": "user",
        "content": "Obs: Nothing happens. | 'help', 'look'",
    }


def test_template_is_configurable_from_yaml_like_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PromptBuilder, "prompt")
    cfg = parser.parse_object(
        {
            "prompt": {
                "template": {"system": "Be brief.", "hidden_actions": ["help", "look"]},
            }
        }
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    builder = instantiate(cfg).prompt
    assert builder.template.system == "Be brief."
    assert builder.format_admissible(ADMISSIBLE) == "- go to bed 1\n- go to desk 1\n- inventory"
