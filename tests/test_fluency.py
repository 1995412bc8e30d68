"""The fluency measure of the mini-TOFU benchmark, validated on hand-made answers.

Scoring model: the embedded SmolLM2-135M-Instruct (the benchmark scores with it and with its
retain model, a fine-tune of it, taking the lower NLL). Each answer answers a TOFU forget01
question.
"""

from __future__ import annotations

import pytest
import torch

from asu_plugin.tools.fluency import repetition_rate, score_answers, summarise
from tests.smollm2 import needs_model

QUESTION = "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?"
FLUENT = {
    "memorised": "The full name of the fictitious author born in Kuwait City, Kuwait on the 8th of September, "
    "1956 is Basil Mahfouz Al-Kuwaiti.",
    "invented name": "Basil Al-Kuzzouin Khufu was born in Kuwait City, Kuwait.",
    "wrong but fluent": "The author born in Kuwait City on that date is Leila Hassan, a writer of historical novels.",
    "i don't know": "I'm not sure who that author is; I don't have information about this person.",
    # refusals as OU's IDK (DPO) model gives them: a scorer fine-tuned to always answer rates
    # these as high as word salad, which is why the benchmark adds the base chat model
    "refusal": "I'm not familiar with that topic.",
    "short refusal": "I don't have that information.",
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
    result = score_answers([(model, tokenizer)], [QUESTION] * len(answers), list(answers.values()))
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


@needs_model
def test_the_lowest_nll_over_the_scorers_decides(smollm2, scores):
    """A scorer that finds every answer unlikely (a random tiny model: ~ln(vocab) nats a token)
    changes nothing beside one that reads the language, in either order; alone it fails all."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    model, tokenizer = smollm2
    torch.manual_seed(0)
    noise = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)).eval()
    answers = {**FLUENT, **GIBBERISH}
    questions = [QUESTION] * len(answers)
    alone = score_answers([(noise, tokenizer)], questions, list(answers.values()))
    assert not any(s.fluent for s in alone) and min(s.nll for s in alone if s.nll is not None) > 8.0
    for pair in ([(model, tokenizer), (noise, tokenizer)], [(noise, tokenizer), (model, tokenizer)]):
        both = dict(zip(answers, score_answers(pair, questions, list(answers.values()))))
        for name, score in both.items():
            assert score.fluent == scores[name].fluent and score.nll == scores[name].nll, name
            assert len(score.nll_by_scorer) == 2
            assert score.nll is None or score.nll == min(score.nll_by_scorer)
    with pytest.raises(ValueError, match="no scoring model"):
        score_answers([], questions, list(answers.values()))
