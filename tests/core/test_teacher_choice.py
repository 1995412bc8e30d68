"""The automatic teacher choice's rule on known numbers (no model): which candidate it picks,
when it refuses, and its tie-break. The expected picks are worked out by hand from the rule as
the module docstring states it."""

from __future__ import annotations

import pytest

from asu_plugin.core.teacher_choice import (
    Candidate,
    Rule,
    Screened,
    TeacherChoiceError,
    candidates,
    decide,
    layer_set,
    screen_failures,
)

HEALTHY = {"n": 8, "empty_rate": 0.0, "loop_rate": 0.125, "not_fluent_rate": 0.125}
LOOPING = {"n": 8, "empty_rate": 0.0, "loop_rate": 0.5, "not_fluent_rate": 0.5}


def figures(removal, damage=0.2, first=0.0, nonfinal=0.001):
    return {"removal": removal, "function_damage": damage, "special_first": first, "special_nonfinal": nonfinal}


def screened(tau, layers, name, **kw):
    fig = figures(**kw)
    return Screened(Candidate(tau, tuple(layers), name), fig, screen_failures(fig))


def test_layer_sets_of_a_30_layer_model():
    expected = {
        "all": range(0, 30), "first half": range(0, 15), "first third": range(0, 10),
        "first sixth": range(0, 5), "middle third": range(10, 20), "last third": range(20, 30),
    }
    for name, indices in expected.items():
        assert layer_set(name, 30) == tuple(indices)
    grid = candidates(30)
    assert len(grid) == 24 and grid[0].key == "tau=1.5 layers=all (0-29)"
    assert [c.tau for c in candidates(30, layers=[0, 1, 2])] == [1.5, 2.0, 2.3, 2.8]
    assert {c.name for c in candidates(30, tau=2.0)} == set(expected) and len(candidates(2, tau=2.0)) == 3


def test_screen_bounds_each_with_its_figure():
    assert screen_failures(figures(1.0)) == []
    assert "first answer position 0.300 > 0.1" in screen_failures(figures(1.0, first=0.3))[0]
    assert "non-final answer positions 0.050 > 0.02" in screen_failures(figures(1.0, nonfinal=0.05))[0]
    assert "function-token NLL increase 1.70 > 1" in screen_failures(figures(3.0, damage=1.7))[0]
    assert "factual-token NLL increase 0.10 < 0.25" in screen_failures(figures(0.1))[0]
    assert len(screen_failures(figures(0.1, damage=2.0, first=0.5))) == 3


def test_picks_the_largest_removal_among_the_teachers_that_pass():
    pool = [
        screened(2.8, range(30), "all", removal=4.0, damage=2.5),            # no sentences: screened out
        screened(2.3, range(15), "first half", removal=2.0, first=0.22),     # ends its turn: screened out
        screened(2.3, range(10), "first third", removal=1.2, damage=0.6),    # best survivor, but loops
        screened(2.0, range(10), "first third", removal=0.7, damage=0.3),    # second survivor: the choice
        screened(1.5, range(5), "first sixth", removal=0.3, damage=0.05),
    ]
    asked = []

    def generate(candidate):
        asked.append(candidate.key)
        return LOOPING if candidate.tau == 2.3 else HEALTHY

    choice, finalists = decide(pool, generate)
    assert choice.candidate.key == "tau=2 layers=first third (0-9)"
    assert asked == ["tau=2.3 layers=first third (0-9)", "tau=2 layers=first third (0-9)"]  # stops at the pass
    assert finalists[0]["failures"] == ["4 of 8 greedy answers looping (50% > 25%)",
                                        "4 of 8 greedy answers not fluent (50% > 25%)"]


def test_tie_break_prefers_smaller_tau_then_fewer_layers():
    # removals within 0.05 nats of the best are tied
    pool = [
        screened(2.8, range(5), "first sixth", removal=1.00),
        screened(2.3, range(10), "first third", removal=0.97),
        screened(2.3, range(5), "first sixth", removal=0.96),
        screened(2.0, range(30), "all", removal=0.90),  # 0.10 below the best: not tied
    ]
    choice, _ = decide(pool, lambda c: HEALTHY)
    assert choice.candidate.key == "tau=2.3 layers=first sixth (0-4)"
    # without the tie margin the largest removal wins outright
    choice, _ = decide(pool, lambda c: HEALTHY, Rule(tie_nats=0.0))
    assert choice.candidate.key == "tau=2.8 layers=first sixth (0-4)"


def test_forget_set_without_questions_takes_the_first_survivor():
    pool = [screened(2.3, range(30), "all", removal=2.0, nonfinal=0.05), screened(2.0, range(10), "first third", removal=0.8)]
    choice, finalists = decide(pool, lambda c: None)
    assert choice.candidate.key == "tau=2 layers=first third (0-9)"
    assert finalists == [{"candidate": choice.candidate.key, "generation": None, "failures": []}]


def test_refuses_naming_the_best_candidates_failure_and_the_fix():
    pool = [screened(2.3, range(30), "all", removal=2.9, damage=1.7), screened(1.5, range(5), "first sixth", removal=0.6)]
    with pytest.raises(TeacherChoiceError) as refused:
        decide(pool, lambda c: LOOPING)
    message = str(refused.value)
    assert "the best, tau=1.5 layers=first sixth (0-4), fails: 4 of 8 greedy answers looping (50% > 25%)" in message
    assert "lower tau" in message and "fewer layers" in message

    keeps_facts = [screened(1.5, range(5), "first sixth", removal=0.05), screened(2.0, range(5), "first sixth", removal=0.1)]
    with pytest.raises(TeacherChoiceError) as refused:
        decide(keeps_facts, lambda c: HEALTHY)
    assert "tau=2 layers=first sixth (0-4), fails: factual-token NLL increase 0.10 < 0.25" in str(refused.value)
    assert "higher tau or more layers" in str(refused.value)
