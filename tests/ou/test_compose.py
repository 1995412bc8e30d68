"""Every config of ours composes in the real OU, found through the Hydra plugin.

Two through the real command lines (``src/train.py`` / ``src/eval.py --cfg job``); all of
them, with their values checked, through Hydra's compose API in one subprocess (each
command line costs ~10 s of imports on a small CPU).
"""

from __future__ import annotations

import json

import pytest
import yaml

UNLEARN = ("train.py", "--config-name=unlearn.yaml", "task_name=compose")
REQUESTS = {
    "tofu_kl": ("unlearn.yaml", ["experiment=unlearn/tofu/asu", "trainer=ASU_KL", "task_name=c"]),
    "tofu_gd": ("unlearn.yaml", ["experiment=unlearn/tofu/asu", "trainer=ASU_GD", "task_name=c"]),
    "tofu_idk": ("unlearn.yaml", ["experiment=unlearn/tofu/asu_idk", "task_name=c"]),
    "muse_news": ("unlearn.yaml", ["experiment=unlearn/muse/asu", "data_split=News", "task_name=c"]),
    "muse_books": ("unlearn.yaml", ["experiment=unlearn/muse/asu", "data_split=Books", "task_name=c"]),
    "muse_books_cli_tau": ("unlearn.yaml", ["experiment=unlearn/muse/asu", "data_split=Books", "trainer.method_args.tau=3.0", "task_name=c"]),
    "wmdp": ("unlearn.yaml", ["experiment=unlearn/wmdp/asu", "task_name=c"]),
    "cpu": ("unlearn.yaml", ["experiment=unlearn/tofu/asu_cpu", "task_name=c"]),
    "cpu_gd": ("unlearn.yaml", ["experiment=unlearn/tofu/asu_cpu", "trainer=ASU_GD", "task_name=c"]),
    "eval_cpu": ("eval.yaml", ["experiment=eval/tofu/asu_cpu", "task_name=c", "asu_eval_split='train[:3]'"]),
    "muse_cpu": ("unlearn.yaml", ["experiment=unlearn/muse/asu_cpu", "task_name=c"]),
    "eval_muse_cpu": ("eval.yaml", ["experiment=eval/muse/asu_cpu", "task_name=c", "asu_eval_rows=3"]),
}


@pytest.fixture(scope="module")
def configs(probe) -> dict:
    results = probe("compose", json.dumps(list(REQUESTS.values())))
    return dict(zip(REQUESTS, results))


def cli_job_config(run_ou, script, *overrides) -> dict:
    run = run_ou(script, *overrides, "--cfg", "job", "--resolve")
    text = "\n" + run.stdout
    return yaml.safe_load(text[text.index("\nmodel:\n") + 1 :])  # skip library messages


def test_all_compose(configs):
    errors = {name: cfg["error"] for name, cfg in configs.items() if "error" in cfg}
    assert not errors


def test_cli_train_cfg_job(run_ou, ou_data):
    cfg = cli_job_config(run_ou, *UNLEARN, "experiment=unlearn/tofu/asu", "trainer=ASU_KL")
    assert cfg["trainer"]["handler"] == "ASU_KL"
    assert cfg["trainer"]["method_args"]["tau"] == 2.3


def test_cli_eval_cfg_job(run_ou, ou_data):
    cfg = cli_job_config(run_ou, "eval.py", "experiment=eval/tofu/asu_cpu", "task_name=compose")
    assert cfg["model"]["model_args"]["device_map"] == "cpu"
    assert cfg["eval"]["tofu"]["metrics"]["forget_Q_A_Prob"]["datasets"]["TOFU_QA_forget"]["args"]["hf_args"]["split"] == "train[:8]"


@pytest.mark.parametrize("name, trainer, retain", [("tofu_kl", "ASU_KL", "KL"), ("tofu_gd", "ASU_GD", "NLL")])
def test_tofu_paper_settings(configs, name, trainer, retain):
    cfg = configs[name]
    assert cfg["trainer"]["handler"] == trainer
    method = cfg["trainer"]["method_args"]
    assert method == {"tau": 2.3, "layers": None, "heads": None, "gamma": 0.1, "alpha": 1.0, "retain_loss_type": retain,
                      "teacher_path": None, "retain_draw": "indexed", "lora": None, "teacher_cache": False, "teacher_cache_max_gb": 4.0}
    assert args_of(cfg)["save_only_model"] is False  # checkpoints, when asked for, can be resumed
    args = cfg["trainer"]["args"]
    assert args["learning_rate"] == 1e-5 and args["num_train_epochs"] == 5
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 32
    assert args["optim"] == "paged_adamw_32bit" and args["weight_decay"] == 0.01 and args["warmup_epochs"] == 1.0
    assert cfg["model"]["model_args"]["pretrained_model_name_or_path"] == "open-unlearning/tofu_Llama-2-7b-chat-hf_full"
    # OU's model config as is: the student on flash-attention, the frozen copy switched to SDPA by the trainer
    assert cfg["model"]["model_args"]["attn_implementation"] == "flash_attention_2"
    assert cfg["data"]["forget"]["TOFU_QA_forget"]["args"]["hf_args"]["name"] == "forget10"


def args_of(cfg):
    return cfg["trainer"]["args"]


def test_tofu_idk(configs):
    cfg = configs["tofu_idk"]
    assert cfg["trainer"]["handler"] == "ASU_IDK"
    assert cfg["trainer"]["method_args"]["retain_loss_type"] == "KL" and cfg["trainer"]["method_args"]["tau"] == 2.3
    forget = cfg["data"]["forget"]
    assert list(forget) == ["TOFU_QA_forget_idk"]
    assert forget["TOFU_QA_forget_idk"]["handler"] == "QAwithIdkDataset"
    assert forget["TOFU_QA_forget_idk"]["args"]["idk_path"] == "./data/idk.jsonl"
    assert args_of(cfg)["learning_rate"] == 1e-5 and args_of(cfg)["num_train_epochs"] == 5


@pytest.mark.parametrize("name, split, tau, gamma", [("muse_news", "News", 2.0, 0.35), ("muse_books", "Books", 2.35, 0.001), ("muse_books_cli_tau", "Books", 3.0, 0.001)])
def test_muse_split_switch(configs, name, split, tau, gamma):
    cfg = configs[name]
    method = cfg["trainer"]["method_args"]
    assert (method["tau"], method["gamma"], method["alpha"]) == (tau, gamma, 1.0)
    assert cfg["trainer"]["handler"] == "ASU_KL"
    args = cfg["trainer"]["args"]
    assert (args["learning_rate"], args["num_train_epochs"], args["lr_scheduler_type"]) == (1e-5, 10, "constant")
    assert cfg["data"]["forget"]["MUSE_forget"]["args"]["hf_args"]["path"] == f"muse-bench/MUSE-{split}"
    assert cfg["model"]["model_args"]["pretrained_model_name_or_path"] == f"muse-bench/MUSE-{split}_target"
    assert cfg["eval"]["muse"]["data_split"] == split


def test_wmdp(configs):
    cfg = configs["wmdp"]
    assert cfg["trainer"]["handler"] == "ASU_KL"
    assert cfg["data"]["forget"]["WMDP_forget"]["handler"] == "PretrainingDataset"
    assert cfg["data"]["forget"]["WMDP_forget"]["args"]["hf_args"]["data_files"].endswith("cyber-forget-corpus.jsonl")
    assert cfg["model"]["model_args"]["pretrained_model_name_or_path"] == "HuggingFaceH4/zephyr-7b-beta"
    assert cfg["eval"]["lm_eval"]["tasks"] == ["wmdp_cyber", "mmlu"]


@pytest.mark.parametrize("name, trainer", [("cpu", "ASU_KL"), ("cpu_gd", "ASU_GD")])
def test_cpu_experiment(configs, name, trainer):
    cfg = configs[name]
    assert cfg["trainer"]["handler"] == trainer
    args = cfg["trainer"]["args"]
    assert args["optim"] == "adamw_torch" and args["bf16"] is False and "warmup_epochs" not in args
    assert args["eval_strategy"] == "no" and args["eval_on_start"] is False
    assert cfg["model"]["model_args"]["attn_implementation"] == "sdpa"
    assert cfg["model"]["model_args"]["torch_dtype"] == "float32"
    assert "SmolLM2-135M-Instruct" in cfg["model"]["model_args"]["pretrained_model_name_or_path"]


def test_cpu_eval_experiment(configs):
    cfg = configs["eval_cpu"]
    assert cfg["model"]["model_args"]["device_map"] == "cpu"
    metrics = cfg["eval"]["tofu"]["metrics"]
    # every default metric of OU's eval/tofu.yaml is still there
    assert set(metrics) >= {"forget_quality", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                            "model_utility", "privleak", "extraction_strength"}
    assert metrics["forget_Q_A_Prob"]["datasets"]["TOFU_QA_forget"]["args"]["hf_args"]["split"] == "train[:3]"
    holdout = metrics["privleak"]["pre_compute"]["mia_min_k"]["datasets"]["TOFU_QA_holdout"]["args"]["hf_args"]
    assert (holdout["name"], holdout["split"]) == ("holdout01", "train[:3]")


def test_muse_cpu_experiments(configs):
    train, evaluate = configs["muse_cpu"], configs["eval_muse_cpu"]
    method = train["trainer"]["method_args"]
    assert (method["tau"], method["gamma"]) == (2.35, 0.001)  # Books by default
    assert train["trainer"]["args"]["optim"] == "adamw_torch" and train["trainer"]["args"]["bf16"] is False
    assert train["data"]["forget"]["MUSE_forget"]["args"]["max_length"] == 256
    assert evaluate["model"]["model_args"]["device_map"] == "cpu"
    metrics = evaluate["eval"]["muse"]["metrics"]
    assert {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "privleak", "extraction_strength"} <= set(metrics)
    assert metrics["forget_knowmem_ROUGE"]["datasets"]["MUSE_forget_knowmem"]["args"]["hf_args"]["split"] == "forget_qa[:3]"
