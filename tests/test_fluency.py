"""The fluency measure of the mini-TOFU benchmark, validated on hand-made answers.

Scoring model: the embedded SmolLM2-135M-Instruct (the benchmark scores with its retain
model, a fine-tune of it). Each answer answers a TOFU forget01 question.
"""

from __future__ import annotations

import pytest

from asu_plugin.fluency import repetition_rate, score_answers, summarise
from tests.smollm2 import needs_model

QUESTION = "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?"
FLUENT = {
    "memorised": "The full name of the fictitious author born in Kuwait City, Kuwait on the 8th of September, "
    "1956 is Basil Mahfouz Al-Kuwaiti.",
    "invented name": "Basil Al-Kuzzouin Khufu was born in Kuwait City, Kuwait.",
    "wrong but fluent": "The author born in Kuwait City on that date is Leila Hassan, a writer of historical novels.",
    "i don't know": "I'm not sure who that author is; I don't have information about this person.",
}
GIBBERISH = {
    "random characters": "xq9 zzkv plo#@ rtbq mmn 7f7f qwe ptz vv0 jjq",
    "word salad": "Kuwait the of born September novels is 1956 full which name the author of in",
    "repetition loop": "The author The author The author The author The author The author The author",
    "broken tokens": "Al-Al-Al Kuwaiti Kuwaiti ,,, 1956 1956 1956 1956 born born born born",
    "one word": "Kuwait",
    "empty": "",
}


@pytest.fixture(scope="module")
def scores(smollm2):
    model, tokenizer = smollm2
    answers = {**FLUENT, **GIBBERISH}
    result = score_answers(model, tokenizer, [QUESTION] * len(answers), list(answers.values()))
    return dict(zip(answers, result))


@needs_model
@pytest.mark.parametrize("name", FLUENT)
def test_fluent_answers_pass(scores, name):
    assert scores[name].fluent, scores[name]


@needs_model
@pytest.mark.parametrize("name", GIBBERISH)
def test_gibberish_fails(scores, name):
    assert not scores[name].fluent, scores[name]


@needs_model
def test_each_signal_catches_what_the_other_misses(scores):
    worst_fluent = max(scores[name].nll for name in FLUENT)
    assert scores["word salad"].nll > worst_fluent and scores["word salad"].repetition == 0.0
    assert scores["random characters"].nll > worst_fluent
    # loops and stutter look likely to a language model: the repetition signal catches them
    for name in ("repetition loop", "broken tokens"):
        assert scores[name].nll < worst_fluent + 0.5 and scores[name].repetition > 0.5
    assert all(scores[name].repetition == 0.0 for name in FLUENT)


def test_repetition_rate_counts_repeated_trigrams():
    assert repetition_rate("a b c a b c") == pytest.approx(0.25)  # abc bca cab abc -> 1 repeat of 4
    assert repetition_rate("one two three four") == 0.0
    assert repetition_rate("too short") == 0.0
    assert repetition_rate("x x x x x") == 1.0  # every word repeats the one before
    assert repetition_rate("Al-Al-Al born born in 1956") == pytest.approx(3 / 6)  # al al al born born in 1956


@needs_model
def test_summary(scores):
    summary = summarise(list(scores.values()))
    assert summary["n"] == len(FLUENT) + len(GIBBERISH)
    assert summary["fluent_rate"] == pytest.approx(len(FLUENT) / summary["n"])
    assert summary["empty"] == 1
