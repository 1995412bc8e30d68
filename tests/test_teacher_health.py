"""The teacher measurements behind ``tau=auto`` and the health check, against independent
references: the health warning on a broken and a healthy SmolLM2 teacher, the special-token mass
recomputed by hand, the token classes against the τ-probe's offset-mapping ones, ROUGE-L against
``rouge_score``, and the choice cache (reuse and invalidation) on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from asu_plugin.core.smoothing import smoothed_attention
from asu_plugin.core.teacher_choice import Rule, TeacherChoiceError
from asu_plugin.core.teacher_health import (
    ForgetRow,
    repetition_rate,
    rouge_l_recall,
    special_token_ids,
    teacher_forced_figures,
)
from asu_plugin.core.teacher_search import choose_teacher, health_check, token_classes
from asu_plugin.tools.probe import default_data_file, load_qa
from asu_plugin.tools.probe.choose import forget_rows
from tests.smollm2 import MODEL_DIR, needs_model

PERMISSIVE = Rule(special_first_max=1.0, special_nonfinal_max=1.0, function_damage_max=1e9, min_removal=-1e9,
                  empty_max=1.0, loop_max=1.0, not_fluent_max=1.0, prompts=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def forget01():
    return load_qa(default_data_file("forget01"), 8)


@pytest.fixture(scope="module")
def tiny(smollm2):
    """A 4-layer Llama with SmolLM2's tokenizer (random weights): measurements in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = smollm2
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def _decode(tokenizer):
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


@needs_model
def test_health_warning_fires_on_a_broken_teacher_not_on_a_healthy_one(smollm2, forget01):
    model, tokenizer = smollm2
    rows = forget_rows(tokenizer, forget01[:4])
    common = {"decode": _decode(tokenizer), "eos_ids": [tokenizer.eos_token_id], "pad_id": tokenizer.pad_token_id}
    broken = health_check(model, rows, (8.0, None), **common)
    assert broken["problem"].startswith("3 of 4 greedy answers of the teacher are not fluent:"), broken
    assert broken["not_fluent_rate"] == 0.75
    healthy = health_check(model, rows, (1.5, "0-4"), **common)
    assert healthy["problem"] is None and healthy["not_fluent_rate"] == 0, healthy
    assert broken["prompts"] == healthy["prompts"] == 4


@needs_model
def test_token_classes_from_ids_match_the_probes_offsets(smollm2, forget01):
    _, tokenizer = smollm2
    special = special_token_ids(tokenizer)
    for qa, row in zip(forget01, forget_rows(tokenizer, forget01)):
        bare = ForgetRow(row.prompt, row.answer)
        from_ids = token_classes(tokenizer, bare, qa["question"], special)
        n_text = sum(c not in ("special", "template") for c in row.classes)
        assert from_ids[:n_text] == row.classes[:n_text], qa["question"]


def test_special_mass_and_kl_against_a_hand_computation(tiny):
    model, tokenizer = tiny
    row = ForgetRow(prompt=(1, 11, 20, 30), answer=(40, 50, 60, tokenizer.eos_token_id), classes=("factual", "function", "factual", "special"))
    special = [0, 1, 2]
    (fig,) = teacher_forced_figures(model, [row], [(3.0, [0, 1])], special, eot_id=2)
    ids = torch.tensor([row.prompt + row.answer])
    with torch.no_grad():
        plain = model(input_ids=ids).logits[0].log_softmax(-1)
        with smoothed_attention(model, 3.0, [0, 1]):
            smooth = model(input_ids=ids).logits[0].log_softmax(-1)
    # logits at position t predict token t + 1: the first answer token (index 4) is predicted at 3
    assert fig["special_first"] == pytest.approx(smooth[3, special].exp().sum().item(), rel=1e-5)
    inside = [3, 4, 5]  # predicting 40, 50, 60; the position predicting eos is the end, not inside
    assert fig["special_nonfinal"] == pytest.approx(smooth[inside][:, special].exp().sum(-1).mean().item(), rel=1e-5)
    kl = (smooth[inside].exp() * (smooth[inside] - plain[inside])).sum(-1)
    assert fig["by_class"]["factual"]["kl"] == pytest.approx(kl[[0, 2]].mean().item(), rel=1e-4)
    gold = torch.tensor([40, 50, 60])
    increase = plain[inside, gold] - smooth[inside, gold]
    assert fig["gold_nll_increase"] == pytest.approx(increase.mean().item(), rel=1e-4, abs=1e-6)


def test_rouge_and_repetition_against_their_references():
    from rouge_score import rouge_scorer

    from asu_plugin.tools.fluency import repetition_rate as fluency_repetition

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.", "He was born in Kuwait, in 1956."),
             ("The author is male.", "The name of the name of the name"), ("a b c", "")]
    for gold, answer in pairs:
        assert rouge_l_recall(gold, answer) == pytest.approx(scorer.score(gold, answer)["rougeL"].recall)
    for text in ("The name of the name of the name of", "Al-Al-Al Kuwaiti Kuwaiti", "A fluent answer.", ""):
        assert repetition_rate(text) == fluency_repetition(text)


def test_choice_cache_is_reused_and_invalidated(tiny, tmp_path):
    model, tokenizer = tiny
    rows = [ForgetRow((1, 11, 20 + i, 30), (40 + i, 50, 60, 2), ("factual", "function", "factual", "special"), "x y")
            for i in range(3)]
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    common = {"special_ids": [0, 1, 2], "eos_ids": [2], "decode": _decode(tokenizer), "rule": PERMISSIVE,
              "cache_dir": tmp_path}
    try:
        first = choose_teacher(model, rows, model_fingerprint="weights-a", **common)
        computed = len(forwards)
        again = choose_teacher(model, rows, model_fingerprint="weights-a", **common)
        assert computed > 0 and len(forwards) == computed  # the cache answered: no forward at all
        assert again["cache"]["hit"] and not first["cache"]["hit"] and again["choice"] == first["choice"]
        assert len(list(tmp_path.glob("*.json"))) == 1
        for changed in ({"model_fingerprint": "weights-b"}, {"rows": rows[:2]},
                        {"rule": Rule(**{**PERMISSIVE.as_dict(), "tie_nats": 0.5})}):
            before = len(forwards)
            args = {"model_fingerprint": "weights-a", "rows": rows, **common, **changed}
            assert not choose_teacher(model, **args)["cache"]["hit"] and len(forwards) > before
        assert len(list(tmp_path.glob("*.json"))) == 4
        # a refusal is cached too, and raised again from the cache
        strict = {**common, "rule": Rule(min_removal=1e9)}
        with pytest.raises(TeacherChoiceError):
            choose_teacher(model, rows, model_fingerprint="weights-a", **strict)
        before = len(forwards)
        with pytest.raises(TeacherChoiceError, match="keeps the facts"):
            choose_teacher(model, rows, model_fingerprint="weights-a", **strict)
        assert len(forwards) == before
        # no fingerprint (weights partitioned away): no cache
        choose_teacher(model, rows, model_fingerprint=None, **common)
        assert len(list(tmp_path.glob("*.json"))) == 5
        assert json.loads(next(tmp_path.glob("*.json")).read_text())["schema"] == "asu-teacher-choice/1"
    finally:
        hook.remove()


def test_probe_choose_cli_refuses_with_the_rules_message(tiny, tmp_path, monkeypatch, capsys):
    from asu_plugin.tools.probe import main

    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("ASU_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["--choose", "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "out"), "-q"]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no candidate teacher passes the automatic choice (20 screened, 0 generated)")
    assert len(list((tmp_path / "cache" / "teacher_choice").glob("*.json"))) == 1


def test_rows_from_ou_labels_tell_questions_from_plain_text():
    from asu_plugin.core.teacher_health import rows_from_labels

    qa = rows_from_labels([1, 5, 6, 7, 8, 2], [-100, -100, -100, 7, 8, 2])
    assert qa.prompt == (1, 5, 6) and qa.answer == (7, 8, 2) and qa.has_question
    text = rows_from_labels([9, 5, 6, 7], [-100, 5, 6, 7])  # OU's pretraining items (MUSE, WMDP)
    assert text.prompt == () and text.answer == (9, 5, 6, 7) and not text.has_question
    with pytest.raises(ValueError, match="no answer tokens"):
        rows_from_labels([1, 2], [-100, -100])
