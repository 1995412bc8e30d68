"""MUSE for real (train + OU's MUSE evaluator) and the WMDP config on a stand-in corpus."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

MUSE_STEPS = 2  # the config trains (its forget KL is logged); eval of the result is the point


def test_muse_books_train_and_evaluate(run_ou, ou_data, model_dir, tmp_path):
    train_dir, eval_dir = tmp_path / "muse", tmp_path / "muse_eval"
    run = run_ou(
        "train.py", "--config-name=unlearn.yaml", "experiment=unlearn/muse/asu_cpu", "task_name=test_muse",
        f"trainer.args.max_steps={MUSE_STEPS}", run_dir=train_dir,
    )
    steps = [entry for entry in run.trainer_state()["log_history"] if "loss" in entry]
    assert len(steps) == MUSE_STEPS and steps[0]["forget_kl"] > 0
    record = run.record()
    assert (record["asu"]["tau"], record["asu"]["gamma"]) == (2.35, 0.001)  # the paper's Books values
    run_ou(
        "eval.py", "experiment=eval/muse/asu_cpu", "task_name=test_muse_eval", "asu_eval_rows=2",
        f"model.model_args.pretrained_model_name_or_path={train_dir}",
        f"model.tokenizer_args.pretrained_model_name_or_path={train_dir}",
        run_dir=eval_dir,
    )
    summary = json.loads((eval_dir / "MUSE_SUMMARY.json").read_text())
    print(json.dumps(summary))
    assert {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "privleak"} <= set(summary)


def test_wmdp_config_trains_on_standin_corpus(run_ou, ou_data, model_dir, tmp_path):
    """WMDP's corpora are a password-protected download: a stand-in text corpus in the same
    format (one text per line, read by datasets' `text` builder) exercises the config's
    training path; evaluation (lm_eval's WMDP / MMLU, hub downloads) stays off."""
    books = ou_data / "muse-bench" / "MUSE-Books"
    lines = [json.loads(line)["text"] for line in (books / "privleak_forget.jsonl").read_text().splitlines()[:8]]
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t[:1500]}) for t in lines[:4]) + "\n")
    retain.write_text("\n".join(json.dumps({"text": t[:1500]}) for t in lines[4:]) + "\n")
    run_dir = tmp_path / "wmdp"
    run = run_ou(
        "train.py", "--config-name=unlearn.yaml", "experiment=unlearn/wmdp/asu", "task_name=test_wmdp",
        "model=SmolLM2-135M-Instruct", f"data.forget.WMDP_forget.args.hf_args.data_files={forget}",
        f"data.retain.WMDP_retain.args.hf_args.data_files={retain}",
        "data.forget.WMDP_forget.args.max_length=128", "data.retain.WMDP_retain.args.max_length=128",
        "trainer.args.max_steps=2", "trainer.args.gradient_accumulation_steps=1", "trainer.args.logging_steps=1",
        "trainer.args.optim=adamw_torch", "trainer.args.bf16=false", "trainer.args.bf16_full_eval=false",
        "trainer.args.eval_strategy=no", "trainer.args.do_eval=false", "trainer.args.eval_on_start=false",
        "+trainer.args.use_cpu=true",
        run_dir=run_dir,
    )
    steps = [entry for entry in run.trainer_state()["log_history"] if "loss" in entry]
    assert len(steps) == 2 and steps[0]["forget_kl"] > 0
    assert run.record()["method"] == "ASU_KL"
