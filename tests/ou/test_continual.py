"""Continual unlearning (python -m asu_plugin.openunlearning.continual) through OU's real train.py / eval.py.

Two steps on 2-question blocks (the runner's --block-rows; the real study uses forget01-sized
blocks of 40) with teacher=original: each step starts from the previous model, ASU's frozen
model is the original, and every step is scored by OU's TOFU evaluator on all blocks so far.
A block's truth ratio is checked against OU's own forget_truth_ratio aggregate (OU's published
evaluation logs, and the runner's own evaluations) and against OU's formula written out here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asu_plugin.openunlearning.continual import ContinualError, block_figures, block_slice, check_args, parser

from .conftest import env

# OU's published TOFU evaluations of its Llama-3.2-1B target (the shared data, see its README.md)
OU_LOGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval_logs" / "tofu_Llama-3.2-1B-Instruct_full"


def ou_truth_ratio(scores) -> float:
    """OU d3d7cf9's forget_truth_ratio aggregate, written out from src/evals/metrics/memorization.py
    (``closer_to_1_better``, the aggregator of configs/eval/tofu_metrics/forget_Truth_Ratio.yaml)."""
    arr = np.array(list(scores), dtype=np.float64)
    return float(np.mean(np.minimum(arr, 1 / (arr + 1e-10))))


def ou_log(name: str) -> dict:
    path = OU_LOGS / name / "TOFU_EVAL.json"
    if not path.is_file():
        pytest.skip(f"OU's published evaluation logs not found at {path} (the project's ../shared/data/eval_logs)")
    return json.loads(path.read_text())


def test_a_block_s_truth_ratio_is_ou_s_aggregate_of_its_rows():
    """forget10 (400 rows) cut into 10 blocks of 40: every block's value is OU's formula on its rows,
    and the 10 equal blocks average to OU's own aggregate; forget01 as one block is OU's aggregate
    itself (not the plain mean of the per-row ratios, which is larger there)."""
    data = ou_log("evals_forget10")
    truth = data["forget_truth_ratio"]
    blocks = block_figures(data, shown=10, step=10, size=40)
    for block, figures in blocks.items():
        first = (10 - int(block)) * 40
        rows = [truth["value_by_index"][str(i)]["score"] for i in range(first, first + 40)]
        assert figures["forget_truth_ratio"] == pytest.approx(ou_truth_ratio(rows), abs=1e-12)
        assert list(figures["forget_truth_ratio_by_index"].values()) == rows
    assert np.mean([b["forget_truth_ratio"] for b in blocks.values()]) == pytest.approx(truth["agg_value"], abs=1e-12)
    forget01 = ou_log("evals_forget01")
    one = block_figures(forget01, shown=1, step=1, size=40)["1"]
    assert one["forget_truth_ratio"] == pytest.approx(forget01["forget_truth_ratio"]["agg_value"], abs=1e-12)
    assert one["forget_truth_ratio"] == pytest.approx(0.4728, abs=1e-4)
    plain = np.mean([v["score"] for v in forget01["forget_truth_ratio"]["value_by_index"].values()])
    assert plain == pytest.approx(0.5029, abs=1e-4)  # the runner's old per-block figure: not OU's metric


def test_block_slices():
    assert block_slice(1, 1) == "train[360:400]"  # = forget01
    assert block_slice(2, 2) == "train[320:360]"
    assert block_slice(1, 3) == "train[280:400]"
    assert block_slice(1, 2, rows=2) == "train[396:400]"


@pytest.mark.parametrize("argv, message", [
    (["--steps", "11"], "must be between 1 and 400"),
    (["--steps", "0"], "must be between"),
    (["--method", "NPO"], "NPO has none"),
])
def test_bad_arguments(tmp_path, argv, message):
    args = parser().parse_args(["--model", str(tmp_path), "--teacher", "original", *argv])
    with pytest.raises(ContinualError, match=message):
        check_args(args)


def test_missing_model_dir(tmp_path):
    args = parser().parse_args(["--model", str(tmp_path / "nope"), "--teacher", "previous"])
    with pytest.raises(ContinualError, match="is not a directory"):
        check_args(args)


@pytest.fixture(scope="module")
def continual_run(ou_dir, ou_data, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("continual")
    argv = [sys.executable, "-m", "asu_plugin.openunlearning.continual", "--model", str(tiny_model_dir), "--teacher", "original",
            "--steps", "2", "--block-rows", "2", "--work", str(work), "--ou-dir", str(ou_dir),
            "--utility-split", "train[:2]", "--max-new-tokens", "8",
            "--override", "trainer.args.per_device_train_batch_size=2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False, env=env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return work


@pytest.mark.slow
def test_each_step_starts_from_the_previous_model_with_the_original_teacher(continual_run, tiny_model_dir):
    model_dir = tiny_model_dir
    for step, start in ((1, model_dir), (2, continual_run / "runs" / "step_1")):
        run = continual_run / "runs" / f"step_{step}"
        record = json.loads((run / "asu_run.json").read_text())
        assert record["asu"]["teacher_path"] == str(model_dir)  # teacher=original, explicit
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        assert f"model.model_args.pretrained_model_name_or_path={start}" in overrides
        assert f"train[{400 - 2 * step}:{402 - 2 * step}]" in overrides  # block `step` only
        assert (run / "model.safetensors").is_file()


@pytest.mark.slow
def test_step_results_cover_every_block_so_far(continual_run):
    steps = [json.loads((continual_run / "steps" / f"step_{k}.json").read_text()) for k in range(3)]
    assert [sorted(s["blocks"]) for s in steps] == [["1"], ["1"], ["1", "2"]]
    assert steps[0]["blocks"]["1"]["forgotten"] is False and steps[2]["blocks"]["2"]["forgotten"] is True
    evals = [json.loads((continual_run / "evals" / f"step_{k}" / "TOFU_EVAL.json").read_text()) for k in range(3)]
    for result, logs in zip(steps, evals):
        assert result["model_utility"] == logs["model_utility"]["agg_value"]
        # the per-block means recombine to OU's aggregate over all blocks so far
        rouge = [b["forget_Q_A_ROUGE"] for b in result["blocks"].values()]
        assert sum(rouge) / len(rouge) == pytest.approx(logs["forget_Q_A_ROUGE"]["agg_value"])
        # and so do the truth ratios, to OU's forget_truth_ratio (not a plain mean of its rows)
        truth = [b["forget_truth_ratio"] for b in result["blocks"].values()]
        assert sum(truth) / len(truth) == pytest.approx(logs["forget_truth_ratio"]["agg_value"])
        for block in result["blocks"].values():
            rows = block["forget_truth_ratio_by_index"]
            assert block["forget_truth_ratio"] == pytest.approx(ou_truth_ratio(rows.values()))
            assert rows == {k: logs["forget_truth_ratio"]["value_by_index"][k]["score"] for k in rows}
    assert steps[0]["blocks"]["1"]["forget_truth_ratio"] == pytest.approx(evals[0]["forget_truth_ratio"]["agg_value"])
    assert len(evals[2]["forget_Q_A_ROUGE"]["value_by_index"]) == 4
    assert (continual_run / "continual.png").stat().st_size > 0
    summary = json.loads((continual_run / "continual.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [0, 1, 2]
    table = (continual_run / "continual.md").read_text().split("| step |", 1)[1].splitlines()
    block = steps[2]["blocks"]["2"]
    assert table[4].startswith(f"| 2 | {steps[2]['model_utility']:.4f} | n/a | ")
    assert table[4].endswith(f"| {block['forget_Q_A_ROUGE']:.3f} / {block['forget_truth_ratio']:.3f} * |")
    assert table[2].endswith("| - |")  # step 0 is not scored on block 2
