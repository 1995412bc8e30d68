"""OU's own TOFU evaluator (src/eval.py) scores the model ASU saved, on sliced splits."""

from __future__ import annotations

import json

import pytest

# the shared ASU_KL run (kl_run) is built once: both files run on the same pytest-xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("kl_run")]

DEFAULT_METRICS = {"forget_quality", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                   "model_utility", "privleak", "extraction_strength"}


def test_tofu_evaluator_on_unlearned_model(kl_run, run_ou, tmp_path):
    model = kl_run.run_dir
    out = tmp_path / "eval"
    run_ou(
        "eval.py", "experiment=eval/tofu/asu_cpu", "task_name=test_asu_eval",
        f"model.model_args.pretrained_model_name_or_path={model}",
        f"model.tokenizer_args.pretrained_model_name_or_path={model}",
        "asu_eval_split='train[:4]'", "asu_eval_max_new_tokens=24",
        run_dir=out,
    )
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    print(json.dumps(summary))
    assert DEFAULT_METRICS <= set(logs)  # no metric removed
    # forget_quality needs a retain model's log: null without one, as in OU (not summarised)
    assert logs["forget_quality"]["agg_value"] is None
    assert DEFAULT_METRICS - {"forget_quality"} <= set(summary)
    assert 0 <= summary["forget_Q_A_Prob"] <= 1 and 0 <= summary["model_utility"] <= 1
    # the slices were used: 4 forget questions scored
    assert len(logs["forget_Q_A_Prob"]["value_by_index"]) == 4
