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


@pytest.mark.parametrize("draw", ["indexed", "ou"])
def test_resume_equals_uninterrupted(run_ou, ou_data, tiny_model_dir, tmp_path, reliability, draw):
    """An ASU_KL run resumed from its step-2 checkpoint ends where the uninterrupted run ends: with
    the indexed retain draw (no RNG state involved) and with OU's global-RNG draw (the state from
    before the prefetched batch is saved and restored, asu_plugin.openunlearning.resume)."""
    args = _train_args(tiny_model_dir, "trainer.args.max_steps=4", "trainer.args.save_strategy=steps",
                       "++trainer.args.save_steps=2", "task_name=resume", f"trainer.method_args.retain_draw={draw}")
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
    saved_rng = sorted(p.name for p in (whole / "checkpoint-2").glob("asu_rng_state*.pth"))
    assert saved_rng == ([] if draw == "indexed" else ["asu_rng_state.pth"])
    reliability(f"resume from checkpoint-2 (trainer.args.resume_from_checkpoint=true), retain_draw={draw}",
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


def _logged(run_dir, keys=("loss", "forget_kl", "retain_loss")):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [{"step": e["step"], **{k: e[k] for k in keys}} for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("method", ["ASU_KL", "ASU_GD"])
def test_two_processes_match_one(ou_dir, ou_data, tiny_model_dir, tmp_path, run_ou, reliability, method):
    """Two processes (torchrun, gloo) and one, with the same global batch, log the same terms at
    every step and end with the same weights: each retain row is drawn from (seed, epoch, forget
    index), and ASU_GD's retain NLL is a token mean over the global batch."""
    common = [a for a in _train_args(tiny_model_dir, "trainer.args.max_steps=3", "task_name=ddp",
                                     "trainer.args.gradient_accumulation_steps=1")
              if "per_device_train_batch_size" not in a and not a.startswith("trainer=")]
    # SGD: the weights are linear in the gradients. (Adam's first steps divide each gradient by its
    # own size, so float noise in a near-zero gradient becomes a learning-rate-sized difference.)
    common += [f"trainer={method}", "trainer.args.optim=sgd", "trainer.args.learning_rate=0.05"]
    one = tmp_path / "one"
    run_ou("train.py", *common, "trainer.args.per_device_train_batch_size=4", run_dir=one)
    two = tmp_path / "two"
    # torchrun, as `accelerate launch --multi_gpu` runs it; the processes find use_cpu=true and
    # initialise gloo. (`accelerate launch --cpu --num_processes 2` starts one process with
    # accelerate 0.34: its multi-CPU path needs mpirun.)
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "src/train.py", *common, "trainer.args.per_device_train_batch_size=2",
            f"hydra.run.dir={two}", f"paths.output_dir={two}"]
    done = subprocess.run(args, cwd=ou_dir, env=env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    a, b = _logged(one), _logged(two)
    epochs = [json.loads((d / "trainer_state.json").read_text())["log_history"][0]["epoch"] for d in (one, two)]
    assert epochs[0] == epochs[1] == 0.1  # 4 of 40 forget rows per step in both: the 2 processes share the data
    assert [row["step"] for row in a] == [row["step"] for row in b] == [1, 2, 3]
    term_diff = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("loss", "forget_kl", "retain_loss"))
    assert term_diff <= 1e-5, (a, b)
    weight_diff = _max_diff(load_file(one / "model.safetensors"), load_file(two / "model.safetensors"))
    assert weight_diff <= 1e-5
    reliability(f"{method}, two processes: torchrun --nproc_per_node 2, gloo (what accelerate launch --multi_gpu runs)",
                f"3 steps: every logged term (loss, forget_kl, retain_loss) within {term_diff:.1e} and the final "
                f"weights within {weight_diff:.1e} of one process on the same global batch (<= 1e-5)")


def test_zero3_reference_goes_through_ous_prepare_ref_model(probe, tiny_model_dir, reliability):
    """With DeepSpeed on (a stand-in is_deepspeed_enabled), the frozen model is prepared by
    OU's _prepare_ref_model -> _prepare_deepspeed, as OU's own KL trainers do."""
    result = probe("deepspeed", str(tiny_model_dir))
    assert result["prepare_deepspeed_calls"] == 1
    assert result["prepared_is_student"] is False and result["prepared_equals_student_weights"] is True
    assert result["ref_model_is_prepared"] is True
    reliability("DeepSpeed ZeRO-3 code path (stand-in is_deepspeed_enabled)",
                "the frozen copy goes through OU's _prepare_ref_model -> _prepare_deepspeed once")
