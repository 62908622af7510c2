"""The guard: each rule on pitches that break it alone, the best-of-N choice and the template fallback."""

import pytest

from tfrec.copywriter.generator import instruction
from tfrec.copywriter.guard import RULES, choose, invented, repeated_ngrams, stutters, template, violations

TITLE = "WHITE HANGING HEART T-LIGHT HOLDER"
PROMPT = instruction(TITLE)
GOOD = "A white heart holder that casts a soft glow on any shelf."


def test_a_grounded_pitch_passes_every_rule():
    assert violations(GOOD, TITLE, prompt_text=PROMPT) == []


@pytest.mark.parametrize("pitch, rule", [
    ("A lovely thing that casts a soft glow on any shelf.", "names_product"),
    ("A white heart holder with 12 candles for every room.", "invented_fact"),
    ("A white heart holder, three inches tall, for any room.", "invented_fact"),
    ("A white heart holder for only $5 this week.", "invented_fact"),
    ("A white heart holder from the Ikea collection.", "invented_fact"),
    ("A white heart holder, see www.example.com today.", "invented_fact"),
    ("A white heart holder of hand-blown glass for any room.", "invented_fact"),
    ("A white heart holder with a bright blue glow for any room.", "invented_fact"),
    ("A white heart holder for the home and a heart holder for the garden.", "repeated_ngram"),
    ("Write a one-sentence product description of the white heart holder.", "echo"),
    ("Product: a white heart holder.", "echo"),
    ("White Hanging Heart T-light Holder.", "echo"),
    ("The white hanging heart holder, for you.", "echo"),
    ("White heart holder.", "length"),
    ("A white heart holder. It glows. It shines.", "length"),
    (" ".join(["A white heart holder"] + ["very"] * 40) + ".", "length"),
    ("A white heart holder that casts a soft glow on", "unfinished"),
])
def test_each_rule_catches_what_it_names(pitch, rule):
    assert rule in RULES
    assert rule in violations(pitch, TITLE, prompt_text=PROMPT)


def test_facts_in_the_inputs_are_not_invented():
    assert invented("A set of 3 Ikea bowls, a heart for a friend.", ["SET OF 3 IKEA BOWLS"]) == []
    assert invented("A heart holder to match your Ikea bowls.", [TITLE, "IKEA BOWLS"]) == []
    assert invented("A heart holder to match your Ikea bowls.", [TITLE]) == ["Ikea"]


def test_a_preposition_is_no_unit_but_a_size_after_a_number_is_invented():
    assert invented("A white heart holder that glows in any room.", [TITLE]) == []
    assert invented("A white heart holder, 12 in tall.", [TITLE]) == ["12"]


def test_repeated_ngrams_are_listed():
    assert repeated_ngrams("paisley paisley paisley paisley") == [("paisley", "paisley", "paisley")]
    assert repeated_ngrams(GOOD) == []


def test_a_word_that_comes_straight_back_is_a_repeat():
    assert stutters("A stylish and stylish spotty bunting.") == ["stylish"]
    assert stutters("A vegan vegan pizza.") == ["vegan"]
    assert stutters("A heart holder for a heart.") == []  # four words apart
    assert "repeated_ngram" in violations("A stylish and stylish heart holder for tea lights.", TITLE)


def test_a_repeat_hidden_by_a_hyphen_is_found():
    assert repeated_ngrams("Tea light, a tea-light, a tea light.") == [
        ("tea", "light", "a"), ("light", "a", "tea"), ("a", "tea", "light")]
    assert "repeated_ngram" in violations("A heart tea light and a heart tea-light holder.", TITLE)


def test_the_best_passing_sample_by_score_is_published():
    samples = ["A lovely thing.", GOOD, "A white heart holder for a cosy evening at home."]
    verdict = choose(samples, TITLE, prompt_text=PROMPT, score=lambda texts, title: [len(t) for t in texts])
    assert verdict.source == "generated" and verdict.pitch == GOOD
    assert verdict.failed == {"names_product": 1, "echo": 1, "length": 1} and verdict.samples == 3


def test_the_template_is_published_when_no_sample_passes_and_says_why():
    verdict = choose(["paisley paisley paisley paisley.", "It costs $5."], TITLE, prompt_text=PROMPT)
    assert verdict.source == "template"
    assert verdict.pitch == "White Hanging Heart T-light Holder, picked for you."
    assert verdict.failed == {"names_product": 2, "invented_fact": 1, "repeated_ngram": 1, "length": 1}
    assert verdict.score is None
    assert violations(verdict.pitch, TITLE) == ["echo"]  # it says the title only: true, but no pitch


def test_a_personalised_template_names_what_was_bought():
    text = template(TITLE, because="RED RETROSPOT MUG")
    assert text == "White Hanging Heart T-light Holder, picked for you because you bought Red Retrospot Mug."
    assert invented(text, [TITLE, "RED RETROSPOT MUG"]) == []
