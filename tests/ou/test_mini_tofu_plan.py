"""Every OU command of the mini-TOFU benchmark composes in the real OU with the intended values.

The runner (bench/mini_tofu.py, the study in bench/minitofu/) takes hours; what can break
silently is a command line: an override OU ignores or a split that does not mean what the issue
asks. So every command of the build and grid phases (and one of the seed phase) is composed with
Hydra's compose API in one subprocess, and the values that define the study are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import BENCH_DIR, load_bench_package

load_bench_package("minitofu")
from minitofu import settings  # noqa: E402
from minitofu.plan import Plan  # noqa: E402

# a row with its own overrides, as the coming rows (ASU with an automatic teacher) will have
EXTRA_ROW = settings.MethodRow("ASU_KL_tau2", "ASU_KL", "asu", ("trainer.method_args.tau=2.0",
                                                               "trainer.method_args.gamma=0.5"))

# one worker builds the module's shared runs once (pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("mini_tofu_plan")


@pytest.fixture(scope="module")
def composed(probe, tmp_path_factory):
    plan = Plan(tmp_path_factory.mktemp("work"), Path("/base/model"))
    jobs = plan.build_jobs() + plan.grid_jobs() + plan.seed_jobs({"ASU_KL": 1e-4})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(settings.METHODS, EXTRA_ROW.label, EXTRA_ROW)
        jobs += plan.method_jobs(EXTRA_ROW.label, 1e-4, 0)[:1]
    requests = [(job.config_name or f"{job.script}.yaml", job.overrides) for job in jobs]
    return plan, dict(zip((job.name for job in jobs), zip(jobs, probe("compose", json.dumps(requests)))))


def test_every_command_composes(composed):
    _, results = composed
    errors = {name: cfg["error"] for name, (_, cfg) in results.items() if "error" in cfg}
    assert not errors
    assert len(results) == 4 + len(settings.METHODS) * 2 * 2 + 2 * 2 + 1


def test_a_row_s_own_overrides_reach_its_trainer(composed):
    _, results = composed
    method_args = results["unlearn_ASU_KL_tau2_lr0.0001_s0"][1]["trainer"]["method_args"]
    assert method_args["tau"] == 2.0 and method_args["gamma"] == 0.5
    default = results["unlearn_ASU_KL_lr0.0001_s0"][1]["trainer"]["method_args"]
    assert default["tau"] == 2.3 and default["gamma"] == 0.1  # OU's (the plugin's) defaults elsewhere


def test_finetune_subsets(composed):
    plan, results = composed
    for name, rows in (("finetune_target", "train[:400]+train[3960:4000]"), ("finetune_retain", "train[:400]")):
        cfg = results[name][1]
        assert cfg["data"]["train"]["TOFU_QA_full"]["args"]["hf_args"] == {
            "name": "full", "split": rows, "path": "locuslab/TOFU"}
        assert cfg["model"]["model_args"]["pretrained_model_name_or_path"] == "/base/model"
        assert cfg["trainer"]["handler"] == "FinetuneTrainer"
        assert cfg["trainer"]["args"]["learning_rate"] == 2e-4 and cfg["trainer"]["args"]["num_train_epochs"] == 5
        assert cfg["trainer"]["args"]["optim"] == "adamw_torch" and cfg["trainer"]["args"]["warmup_epochs"] == 0


@pytest.mark.parametrize("method, handler, forget_set", [
    ("GradDiff", "GradDiff", "TOFU_QA_forget"), ("NPO", "NPO", "TOFU_QA_forget"),
    ("SimNPO", "SimNPO", "TOFU_QA_forget"), ("IDK", "DPO", "TOFU_QA_forget_idk"),
    ("ASU_GD", "ASU_GD", "TOFU_QA_forget"), ("ASU_KL", "ASU_KL", "TOFU_QA_forget")])
def test_unlearning_runs(composed, method, handler, forget_set):
    plan, results = composed
    for lr in (2e-5, 1e-4):
        cfg = results[f"unlearn_{method}_lr{lr:g}_s0"][1]
        assert cfg["trainer"]["handler"] == handler
        assert cfg["trainer"]["args"]["learning_rate"] == lr and cfg["trainer"]["args"]["seed"] == 0
        assert cfg["trainer"]["args"]["num_train_epochs"] == 5
        args = cfg["trainer"]["args"]
        assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 8
        assert cfg["model"]["model_args"]["pretrained_model_name_or_path"] == str(plan.target)
        assert list(cfg["data"]["forget"]) == [forget_set]
        assert cfg["data"]["forget"][forget_set]["args"]["hf_args"]["name"] == "forget01"
        assert cfg["data"]["retain"]["TOFU_QA_retain"]["args"]["hf_args"] == {
            "name": "full", "split": "train[:400]", "path": "locuslab/TOFU"}


def test_evaluations(composed):
    plan, results = composed
    cfg = results["eval_ASU_KL_lr0.0001_s0"][1]
    metrics = cfg["eval"]["tofu"]["metrics"]
    assert metrics["forget_Q_A_ROUGE"]["datasets"]["TOFU_QA_forget"]["args"]["hf_args"] == {
        "name": "forget01_perturbed", "split": "train", "path": "locuslab/TOFU"}  # forget01 + perturbed fields
    assert metrics["forget_Q_A_ROUGE"]["generation_args"]["max_new_tokens"] == 64
    utility = metrics["model_utility"]["pre_compute"]
    assert utility["retain_Q_A_ROUGE"]["datasets"]["TOFU_QA_retain_eval"]["args"]["hf_args"]["split"] == "train[:80]"
    assert cfg["eval"]["tofu"]["retain_logs_path"] == str(plan.retain_log)
    assert cfg["model"]["model_args"]["pretrained_model_name_or_path"].endswith("runs/ASU_KL_lr0.0001_s0")
    assert results["eval_retain"][1]["eval"]["tofu"]["retain_logs_path"] is None
    assert results["unlearn_ASU_KL_lr0.0001_s2"][1]["trainer"]["args"]["seed"] == 2


def test_jobs_wait_for_the_models_they_read(tmp_path):
    """Jobs run side by side, so each must name what it reads: an evaluation the retain model's
    log (forget_quality), an unlearning run the target model."""
    plan = Plan(tmp_path, Path("/base/model"))
    build = plan.build
    assert build["eval_retain"].after == (build["finetune_retain"],)
    assert build["eval_target"].after == (build["finetune_target"], build["eval_retain"])
    seeds = plan.seed_jobs({"ASU_KL": 1e-4})
    for job in plan.grid_jobs() + seeds:
        if job.script == "train":
            assert job.after == (build["finetune_target"],)
        else:
            unlearn = job.after[0]
            assert unlearn.out_dir == plan.work / "runs" / job.name.removeprefix("eval_")
            assert job.after[1] is build["eval_retain"]


def test_the_command_line_prints_the_plan(tmp_path):
    """``python bench/mini_tofu.py --dry-run`` (run as a file, from another directory) prints the
    build and grid commands, one per line, and needs neither OU nor a model."""
    work, base = tmp_path / "work", tmp_path / "base"
    done = subprocess.run([sys.executable, str(BENCH_DIR / "mini_tofu.py"), "--dry-run", "--work", str(work),
                           "--base-model", str(base)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4 + len(settings.METHODS) * 2 * 2
    assert lines[0].startswith("finetune_target: python src/train.py ") and f"model_name_or_path={base} " in lines[0]
    assert lines[-1].startswith(f"eval_{list(settings.METHODS)[-1]}_lr0.0001_s0: python src/eval.py ")
    assert f"retain_logs_path={work}/evals/retain/TOFU_EVAL.json" in lines[-1]
