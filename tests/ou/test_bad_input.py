"""Bad input gives a clear error that says what to do — and a failed run leaves no model."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from .conftest import CPU_TRAIN, IDK_ON_CPU, OFFLINE, model_overrides

pytestmark = pytest.mark.slow


def error_line(output: str, prefer: str | None = None) -> str:
    """The line of a failed run a user reads for the problem: the one containing ``prefer``
    (our hint), else the last line naming an error."""
    lines = [line.strip() for line in output.splitlines()]
    chosen = [line for line in lines if prefer and prefer in line]
    chosen = chosen or [line for line in lines if "Error" in line or "error:" in line] or lines
    return chosen[-1][:400]


EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|NotFound|Warning)(?::\s|$)")


def exception_line(output: str) -> str:
    """The last ``SomeError: message`` line of a failed run: what the exception says, never
    Hydra's echo of the command line ("Error executing job with overrides: [...]")."""
    lines = [line.strip() for line in output.splitlines() if EXCEPTION.match(line.strip())]
    assert lines, f"no exception line in the output:\n{output[-3000:]}"
    return lines[-1]


def test_literal_train_with_asu_trainer_names_unlearn_command(run_ou, reliability):
    run = run_ou("train.py", "trainer=ASU_KL", check=False)
    assert run.returncode != 0
    assert "--config-name=unlearn.yaml experiment=unlearn/tofu/asu trainer=ASU_KL" in run.output
    reliability("`python src/train.py trainer=ASU_KL` (OU's finetune config)",
                error_line(run.output, prefer="--config-name=unlearn.yaml"))


def test_finetune_config_refused_by_trainer(run_ou, ou_data, model_dir, tmp_path, reliability):
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
    reliability("finetune config with an ASU trainer (model loads, then the trainer refuses)", error_line(run.output))


def test_tau_below_one_fails_before_training(run_ou, ou_data, model_dir, tmp_path, reliability):
    run_dir = tmp_path / "tau"
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_tau", "trainer.method_args.tau=0.5",
                 run_dir=run_dir, check=False)
    assert run.returncode != 0
    assert "SmoothingError" in run.output and "tau" in run.output
    marker = (run_dir / "ASU_FAILED.txt").read_text()
    assert "SmoothingError" in marker and "No model was saved" in marker
    assert not (run_dir / "model.safetensors").exists()
    reliability("trainer.method_args.tau=0.5 through OU's train.py", error_line(run.output) + "; ASU_FAILED.txt, no model")


def test_unknown_trainer_option(run_ou, ou_data, model_dir, tmp_path, reliability):
    plain = run_ou("train.py", *CPU_TRAIN, "task_name=test_opt", "trainer.method_args.taux=2", "--cfg", "job", check=False)
    assert plain.returncode != 0 and "trainer.method_args.taux" in plain.output  # Hydra: not in struct
    run_dir = tmp_path / "opt"
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_opt", "+trainer.method_args.taux=2",
                 run_dir=run_dir, check=False)
    assert run.returncode != 0
    assert "unknown method_args option(s) taux" in run.output
    assert (run_dir / "ASU_FAILED.txt").is_file()
    reliability("unknown trainer option (+trainer.method_args.taux=2)", error_line(run.output))


def test_register_without_openunlearning_says_how(tmp_path, reliability):
    env = {**os.environ, **OFFLINE, "OU_DIR": str(tmp_path / "no-ou")}
    code = "import asu_plugin; asu_plugin.register()"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "OpenUnlearningNotFound" in done.stderr and "OU_DIR" in done.stderr
    reliability("OpenUnlearning missing (OU_DIR points nowhere)", error_line(done.stderr, prefer="OpenUnlearningNotFound"))


def test_registration_idempotent(probe):
    result = probe("registry")
    assert result["added"] == ["ASU_GD", "ASU_IDK", "ASU_KL", "SGA"]
    assert result["model_handler"] == "asu_plugin.openunlearning.teacher_model.ASUSmoothedTeacher"
    assert result["size_first"] == result["size_second"] == result["size_after_reload"]
    assert result["same_class"] is True
    assert result["classes"] == {name: f"asu_plugin.openunlearning.trainers.asu.{name}" for name in ("ASU_GD", "ASU_IDK", "ASU_KL")}
    providers = [provider for provider, _ in result["search_path"]]
    assert providers.count("asu-plugin") == 1  # not appended twice


def test_missing_data_split_is_named(run_ou, ou_data, model_dir, tmp_path, reliability):
    """A split the offline mirror lacks fails in OU's loader with the name and the choices."""
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_data", "forget_split=forget77",
                 run_dir=tmp_path / "data", check=False)
    assert run.returncode != 0
    assert "forget77" in run.output and "forget01" in run.output  # what was asked, what exists
    assert not (tmp_path / "data" / "model.safetensors").exists()
    reliability("data split missing (forget_split=forget77)", error_line(run.output))


def test_missing_model_dir_is_named(run_ou, ou_data, tmp_path, reliability):
    missing = tmp_path / "no-such-model"
    run = run_ou("train.py", *CPU_TRAIN, "task_name=test_model", *model_overrides(missing),
                 run_dir=tmp_path / "model", check=False)
    assert run.returncode != 0
    line = exception_line(run.output)
    assert str(missing) in line or "no-such-model" in line, line
    reliability("model directory missing", line)


def test_missing_idk_file_is_named(run_ou, ou_data, model_dir, tmp_path, reliability):
    run = run_ou("train.py", "--config-name=unlearn.yaml", "experiment=unlearn/tofu/asu_idk", *IDK_ON_CPU,
                 *model_overrides(model_dir), "task_name=test_idk", "data.forget.TOFU_QA_forget_idk.args.idk_path=./data/no_idk.jsonl",
                 run_dir=tmp_path / "idk", check=False)
    assert run.returncode != 0
    line = exception_line(run.output)
    assert "no_idk.jsonl" in line, line
    reliability("IDK data file missing (ASU_IDK, idk_path)", line)


@pytest.mark.parametrize("method", ["ASU_GD", "ASU_KL", "ASU_IDK"])
def test_batches_without_answer_tokens_keep_the_loss_finite(probe, tiny_model_dir, method, reliability):
    """A retain batch with zero answer tokens, a forget batch that is all prompt: loss finite."""
    result = probe("edge", method, str(tiny_model_dir))
    for case, value in result.items():
        assert value["finite"], (case, value)
        assert value["grad_finite"], (case, value)
    assert result["retain_without_answers"]["retain_loss"] == 0.0
    assert result["forget_all_prompt"]["forget_kl"] == 0.0
    reliability(f"{method}: retain batch with zero answer tokens / forget batch all prompt",
                "finite loss and gradients: " + "; ".join(
                    f"{case} loss {value['loss']:.4f}" for case, value in result.items()))


def test_bf16_on_cpu(run_ou, ou_data, tiny_model_dir, tmp_path, reliability):
    """bf16=true on a CPU (OU's default precision): what happens here."""
    run = run_ou("train.py", *CPU_TRAIN, "trainer=ASU_KL", *model_overrides(tiny_model_dir), "task_name=test_bf16",
                 "trainer.args.bf16=true", "model.model_args.torch_dtype=bfloat16", "trainer.args.max_steps=2",
                 run_dir=tmp_path / "bf16", check=False)
    if run.returncode == 0:
        state = json.loads((tmp_path / "bf16" / "trainer_state.json").read_text())
        losses = [e["loss"] for e in state["log_history"] if "loss" in e]
        assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
        reliability("bf16 weights + bf16=true on this CPU", f"supported here: trains, finite losses {losses}")
    else:
        line = exception_line(run.output)
        assert "bf16" in line.lower() or "bfloat16" in line.lower(), line
        reliability("bf16 weights + bf16=true on this CPU", line)
