"""Scoring the smoothed teacher with OU's own evaluator: model_handler=ASUSmoothedTeacher."""

from __future__ import annotations

import json

import pytest

from .conftest import model_overrides

pytestmark = pytest.mark.slow


def test_get_model_returns_the_smoothed_teacher(probe, model_dir):
    """OU's get_model through our handler == smoothed_attention on a plain load, for forward and
    for KV-cached generation; asu_unsmooth() gives the plain model back."""
    result = probe("teacher", str(model_dir))
    print(json.dumps(result))
    assert result["max_diff_to_smoothed"] <= 1e-5
    assert result["max_diff_to_plain"] > 1e-2  # it is smoothed
    assert result["generation_equal"] is True
    assert result["restored_diff_to_plain"] == 0.0
    assert result["smoothing"] == {"tau": 2.3, "layers": "0-5", "heads": None}


def test_ou_eval_scores_the_teacher(run_ou, ou_data, tiny_model_dir, tmp_path):
    out = tmp_path / "teacher_eval"
    run = run_ou(
        "eval.py", "experiment=eval/tofu/asu_cpu", "task_name=test_teacher_eval", *model_overrides(tiny_model_dir),
        "++model.model_handler=ASUSmoothedTeacher", "+model.model_args.asu_tau=2.3",
        "asu_eval_split='train[:2]'", "asu_eval_max_new_tokens=8", run_dir=out,
    )
    assert "ASUSmoothedTeacher" in run.output and "tau=2.3" in run.output
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    assert len(logs["forget_Q_A_Prob"]["value_by_index"]) == 2
    assert 0 <= logs["forget_Q_A_Prob"]["agg_value"] <= 1


def test_teacher_without_tau_is_refused(run_ou, ou_data, tmp_path):
    run = run_ou("eval.py", "experiment=eval/tofu/asu_cpu", "task_name=test_teacher_no_tau",
                 "++model.model_handler=ASUSmoothedTeacher", run_dir=tmp_path / "no_tau", check=False)
    assert run.returncode != 0
    assert "+model.model_args.asu_tau=2.3" in run.output
