"""bench/teacher.py's plain-words answers follow the figures: the same report code writes
"ends its turn at once" for a teacher whose first answer token is end-of-turn, and "not its
mechanism" for one that loops instead (synthetic cells, no model)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from teacherbench.report import answers_in_words, markdown, mechanism_words  # noqa: E402


def cell(first_top, empty, loops, fluent, kl_fact=1.0, kl_func=0.5, up_fact=1.0, up_func=0.3):
    tf = {"special_first": first_top / 3, "special_first_top": first_top, "special_nonfinal": 0.001, "eot_nonfinal": 0.001,
          "by_class": {"factual": {"kl": kl_fact, "nll_increase": up_fact}, "function": {"kl": kl_func, "nll_increase": up_func}}}
    gen = {"empty_rate": empty, "loop_rate": loops, "fluent_rate": fluent, "rouge_l_recall": 0.2, "answers": ["a b"]}
    return tf, gen


def model(paper, other):
    cells = {"plain": cell(0.0, 0.0, 0.0, 1.0, 0, 0, 0, 0), "tau=2.3|all": paper, "tau=2|first sixth": other}
    return {"model_dir": "m", "num_layers": 30, "teacher_forced": {k: v[0] for k, v in cells.items()},
            "generated": {k: v[1] for k, v in cells.items()}, "choice": None}


def test_a_teacher_that_ends_its_turn_is_said_to():
    m = model(cell(0.9, 0.8, 0.1, 0.1, kl_fact=4.0, kl_func=4.2), cell(0.0, 0.0, 0.0, 0.95))
    why = " ".join(answers_in_words(m)["why"])
    assert "80% of the teacher's greedy answers are empty" in why and "It ends its turn at once" in why
    assert "on 90% of the forget questions" in why and "the teacher no longer forms sentences" in why
    words = " ".join(mechanism_words(m))
    assert "tau 2.3, all (90%)" in words and "explains every one of them" in words
    assert "end-of-turn mass is its mechanism" in words
    keep = answers_in_words(m)["fluent_and_forgetting"]
    assert keep[0].startswith("1 of 2 teachers keep at least 90%") and keep[1].startswith("tau 2, first sixth")


def test_a_looping_teacher_is_not_blamed_on_end_of_turn():
    m = model(cell(0.1, 0.1, 0.9, 0.0, kl_fact=4.0, kl_func=4.2), cell(0.0, 0.0, 0.5, 0.5))
    why = " ".join(answers_in_words(m)["why"])
    assert "End-of-turn is not what it teaches" in why and "90% of its answers loop" in why
    assert "No teacher's greedy answers are mostly empty" in " ".join(mechanism_words(m))
    assert "No teacher keeps 90%" in answers_in_words(m)["fluent_and_forgetting"][0]
    text = markdown({"models": {"base": m}, "skipped": {"target": "no model"}, "rows": 40, "n_generate": 20,
                     "max_new_tokens": 48, "cost": {"cpu_s": 3600, "by_model": {"base": 3600}}})
    assert "* skipped target: no model" in text and "1.00 CPU-hours in all" in text
    assert "| tau 2.3, all | 0.033 (10%) |" in text
