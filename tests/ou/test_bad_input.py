"""Bad input gives a clear error that says what to do — and a failed run leaves no model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import CPU_TRAIN, OFFLINE

pytestmark = pytest.mark.slow


def test_literal_train_with_asu_trainer_names_unlearn_command(run_ou):
    run = run_ou("train.py", "trainer=ASU_KL", check=False)
    assert run.returncode != 0
    assert "--config-name=unlearn.yaml experiment=unlearn/tofu/asu trainer=ASU_KL" in run.output


def test_finetune_config_refused_by_trainer(run_ou, ou_data, model_dir, tmp_path):
    run_dir = tmp_path / "finetune"
    run = run_ou(
        "train.py", "trainer=ASU_KL", "model=SmolLM2-135M-Instruct", "task_name=test_finetune",
        "trainer.args.bf16=false", "trainer.args.bf16_full_eval=false", "trainer.args.optim=adamw_torch",
        run_dir=run_dir, check=False,
    )
    assert run.returncode != 0
    assert "ASU_KL unlearns: it needs OU's forget/retain data" in run.output
    assert "--config-name=unlearn.yaml experiment=unlearn/tofu/asu trainer=ASU_KL" in run.output
    assert (run_dir / "ASU_FAILED.txt").is_file() and not (run_dir / "model.safetensors").exists()


def test_tau_below_one_fails_before_training(run_ou, ou_data, model_dir, tmp_path):
    run_dir = tmp_path / "tau"
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_tau", "trainer.method_args.tau=0.5",
                 run_dir=run_dir, check=False)
    assert run.returncode != 0
    assert "SmoothingError" in run.output and "tau" in run.output
    marker = (run_dir / "ASU_FAILED.txt").read_text()
    assert "SmoothingError" in marker and "No model was saved" in marker
    assert not (run_dir / "model.safetensors").exists()


def test_unknown_trainer_option(run_ou, ou_data, model_dir, tmp_path):
    plain = run_ou("train.py", *CPU_TRAIN, "task_name=test_opt", "trainer.method_args.taux=2", "--cfg", "job", check=False)
    assert plain.returncode != 0 and "trainer.method_args.taux" in plain.output  # Hydra: not in struct
    run_dir = tmp_path / "opt"
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_opt", "+trainer.method_args.taux=2",
                 run_dir=run_dir, check=False)
    assert run.returncode != 0
    assert "unknown method_args option(s) taux" in run.output
    assert (run_dir / "ASU_FAILED.txt").is_file()


def test_register_without_openunlearning_says_how(tmp_path):
    env = {**os.environ, **OFFLINE, "OU_DIR": str(tmp_path / "no-ou")}
    code = "import asu_plugin; asu_plugin.register()"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "OpenUnlearningNotFound" in done.stderr and "OU_DIR" in done.stderr


def test_registration_idempotent(probe):
    result = probe("registry")
    assert result["added"] == ["ASU_GD", "ASU_KL"]
    assert result["size_first"] == result["size_second"] == result["size_after_reload"]
    assert result["same_class"] is True
    assert result["classes"] == {"ASU_GD": "asu_plugin.trainers.ASU_GD", "ASU_KL": "asu_plugin.trainers.ASU_KL"}
    providers = [provider for provider, _ in result["search_path"]]
    assert providers.count("asu-plugin") == 1  # not appended twice


def test_missing_data_split_is_named(run_ou, ou_data, model_dir, tmp_path):
    """A split the offline mirror lacks fails in OU's loader with the name and the choices."""
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_data", "forget_split=forget77",
                 run_dir=tmp_path / "data", check=False)
    assert run.returncode != 0
    assert "forget77" in run.output and "forget01" in run.output  # what was asked, what exists
    assert not (tmp_path / "data" / "model.safetensors").exists()
