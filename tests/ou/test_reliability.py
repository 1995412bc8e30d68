"""Reliability through OU's real src/train.py: resume, kill -9, determinism, two processes.

A tiny 2-layer Llama with SmolLM2's tokenizer (``tiny_model_dir``) keeps each run to seconds;
the code paths are the ones every model takes. Each test records its row of
docs/reliability.md (``reliability`` fixture; regenerate with ``python docs/reliability.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from asu_plugin.openunlearning.run_record import weights_fingerprint

from .conftest import CPU_TRAIN, env, model_overrides

pytestmark = pytest.mark.slow


def _train_args(tiny_model_dir, *extra):
    return [*CPU_TRAIN, "trainer=ASU_KL", *model_overrides(tiny_model_dir), "trainer.args.learning_rate=1e-3",
            "trainer.args.seed=3", "trainer.args.report_to=none", *extra]


def _losses(run_dir):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [(e["step"], e["loss"], e["forget_kl"], e["retain_loss"]) for e in state["log_history"] if "loss" in e]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_resume_equals_uninterrupted(run_ou, ou_data, tiny_model_dir, tmp_path, reliability):
    """An ASU_KL run resumed from its step-2 checkpoint ends where the uninterrupted run ends."""
    args = _train_args(tiny_model_dir, "trainer.args.max_steps=4", "trainer.args.save_strategy=steps",
                       "++trainer.args.save_steps=2", "task_name=resume")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_ou("train.py", *args, run_dir=whole)
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")  # a run stopped after its checkpoint
    run_ou("train.py", *args, "trainer.args.resume_from_checkpoint=true", run_dir=resumed)

    diff = _max_diff(load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors"))
    assert diff <= 1e-6
    # steps 3-4 of both runs log the same losses: same data, same teacher
    tail = [row for row in _losses(whole) if row[0] > 2]
    assert len(tail) == 2
    for a, b in zip(tail, _losses(resumed)[-2:]):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], abs=1e-6)
    # the frozen teacher / reference is the original model, not the checkpointed student
    from transformers import AutoModelForCausalLM

    original = weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    checkpoint = weights_fingerprint(AutoModelForCausalLM.from_pretrained(whole / "checkpoint-2"))
    record = json.loads((resumed / "asu_run.json").read_text())
    assert record["resumed_from"] == "True" and record["status"] == "trained"
    assert record["frozen_fingerprint"] == original != checkpoint
    reliability("resume from checkpoint-2 (trainer.args.resume_from_checkpoint=true)",
                f"final weights max |diff| {diff:.1e} vs the uninterrupted run (<= 1e-6); frozen model = original")


def test_kill_9_mid_run_leaves_loadable_checkpoints(ou_dir, ou_data, tiny_model_dir, tmp_path, run_ou, reliability):
    """kill -9 during training: finished checkpoints load and evaluate; our record stays whole."""
    run_dir = tmp_path / "killed"
    args = [sys.executable, "src/train.py", *_train_args(tiny_model_dir, "trainer.args.max_steps=400",
            "trainer.args.save_strategy=steps", "++trainer.args.save_steps=1", "task_name=killed"),
            f"hydra.run.dir={run_dir}", f"paths.output_dir={run_dir}"]
    process = subprocess.Popen(args, cwd=ou_dir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint-3" / "trainer_state.json").is_file():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    record = json.loads((run_dir / "asu_run.json").read_text())  # complete JSON, never half-written
    assert record["status"] == "training"
    assert not (run_dir / "model.safetensors").exists()  # OU saves the final model only at the end
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    finished = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
    assert len(finished) >= 3
    from transformers import AutoModelForCausalLM

    for checkpoint in finished:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    out = tmp_path / "eval_checkpoint"
    run_ou("eval.py", "experiment=eval/tofu/asu_cpu", "task_name=eval_killed", *model_overrides(finished[-1]),
           "asu_eval_split='train[:2]'", "asu_eval_max_new_tokens=4", run_dir=out)
    assert json.loads((out / "TOFU_EVAL.json").read_text())["forget_Q_A_Prob"]["agg_value"] >= 0
    reliability("kill -9 during training (after checkpoint-3)",
                f"{len(finished)} finished checkpoints load and evaluate with OU's eval.py; asu_run.json "
                "complete (status 'training'); no final model")


def test_identical_runs_give_identical_losses(run_ou, ou_data, tiny_model_dir, tmp_path, reliability):
    """Determinism on CPU: the same run twice logs bitwise-identical losses."""
    args = _train_args(tiny_model_dir, "trainer.args.max_steps=3", "task_name=determinism")
    first, second = tmp_path / "a", tmp_path / "b"
    run_ou("train.py", *args, run_dir=first)
    run_ou("train.py", *args, run_dir=second)
    assert _losses(first) == _losses(second) and len(_losses(first)) == 3
    assert _max_diff(load_file(first / "model.safetensors"), load_file(second / "model.safetensors")) == 0.0
    reliability("the same ASU_KL run twice (seed 3, CPU)", "identical losses at every step, identical weights")


def test_two_processes_match_one(ou_dir, ou_data, tiny_model_dir, tmp_path, run_ou, reliability):
    """Two processes (torchrun, gloo) log the one-process forget term for the same global batch."""
    common = _train_args(tiny_model_dir, "trainer.args.max_steps=2", "task_name=ddp",
                         "trainer.args.gradient_accumulation_steps=1")
    one = tmp_path / "one"
    run_ou("train.py", *[a for a in common if "per_device_train_batch_size" not in a],
           "trainer.args.per_device_train_batch_size=4", run_dir=one)
    two = tmp_path / "two"
    # torchrun, as `accelerate launch --multi_gpu` runs it; the processes find use_cpu=true and
    # initialise gloo. (`accelerate launch --cpu --num_processes 2` starts one process with
    # accelerate 0.34: its multi-CPU path needs mpirun.)
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "src/train.py", *[a for a in common if "per_device_train_batch_size" not in a],
            "trainer.args.per_device_train_batch_size=2", f"hydra.run.dir={two}", f"paths.output_dir={two}"]
    done = subprocess.run(args, cwd=ou_dir, env=env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    a, b = _losses(one), _losses(two)
    epochs = [json.loads((d / "trainer_state.json").read_text())["log_history"][0]["epoch"] for d in (one, two)]
    assert epochs[0] == epochs[1] == 0.1  # 4 of 40 forget rows per step in both: the 2 processes share the data
    assert [row[0] for row in a] == [row[0] for row in b] == [1, 2]
    assert abs(a[0][2] - b[0][2]) <= 1e-5  # forget_kl of the first step: same 4 forget rows, same model
    assert (two / "model.safetensors").is_file()
    reliability("two processes: torchrun --nproc_per_node 2, gloo (what accelerate launch --multi_gpu runs)",
                f"completes; step-1 forget_kl {b[0][2]:.6f} vs {a[0][2]:.6f} in one process (|diff| "
                f"{abs(a[0][2] - b[0][2]):.1e} <= 1e-5)")


def test_zero3_reference_goes_through_ous_prepare_ref_model(probe, tiny_model_dir, reliability):
    """With DeepSpeed on (a stand-in is_deepspeed_enabled), the frozen model is prepared by
    OU's _prepare_ref_model -> _prepare_deepspeed, as OU's own KL trainers do."""
    result = probe("deepspeed", str(tiny_model_dir))
    assert result["prepare_deepspeed_calls"] == 1
    assert result["prepared_is_student"] is False and result["prepared_equals_student_weights"] is True
    assert result["ref_model_is_prepared"] is True
    reliability("DeepSpeed ZeRO-3 code path (stand-in is_deepspeed_enabled)",
                "the frozen copy goes through OU's _prepare_ref_model -> _prepare_deepspeed once")
