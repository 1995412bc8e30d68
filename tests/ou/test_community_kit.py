"""community/methods/ASU/run.sh (OU's contribution kit): every command composes in the real OU.

``DRY_RUN=1`` makes run.sh print its commands. All of them are composed with Hydra's compose
API in one subprocess and their defining values checked; the first training and the first
evaluation command also run for real with ``--cfg job`` (each such run costs ~10 s of imports).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

RUN_SH = Path(__file__).resolve().parents[2] / "community" / "methods" / "ASU" / "run.sh"


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    done = subprocess.run(["bash", str(RUN_SH)], env={**os.environ, "DRY_RUN": "1"}, capture_output=True,
                          text=True, check=True, timeout=60)
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def _request(argv: list[str]):
    script = Path(argv[1]).name
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")),
                  "train.yaml" if script == "train.py" else "eval.yaml")
    overrides = [a for a in argv[2:] if not a.startswith(("--config-name=", "paths.output_dir="))]
    return config, overrides


def test_the_plan(commands):
    assert len(commands) == 2 * 3 * 2 + 2 * 2  # (train + eval) x 3 splits x 2 models, + MUSE News / Books
    assert all(argv[0] == "python" and argv[1] in ("src/train.py", "src/eval.py") for argv in commands)


def test_every_command_composes(commands, probe):
    results = probe("compose", json.dumps([_request(argv) for argv in commands]))
    errors = [(" ".join(argv), r["error"]) for argv, r in zip(commands, results) if "error" in r]
    assert not errors
    trains = [r for argv, r in zip(commands, results) if argv[1] == "src/train.py"]
    for cfg in trains:
        assert cfg["trainer"]["handler"] == "ASU_KL"
        assert cfg["trainer"]["args"]["learning_rate"] == 1e-5
        # OU's model configs unchanged (no attn_implementation override): the trainer gives the
        # frozen copy SDPA itself (asu_plugin.openunlearning.frozen_model)
        assert cfg["model"]["model_args"]["attn_implementation"] == "flash_attention_2"
    tofu = [cfg for cfg in trains if "tofu" in cfg["task_name"]]
    assert len(tofu) == 6
    for cfg in tofu:
        assert cfg["trainer"]["method_args"]["tau"] == 2.3 and cfg["trainer"]["method_args"]["gamma"] == 0.1
        assert cfg["trainer"]["args"]["num_train_epochs"] == 5
        assert cfg["trainer"]["args"]["per_device_train_batch_size"] * cfg["trainer"]["args"]["gradient_accumulation_steps"] == 32
        split = cfg["forget_split"]
        assert cfg["data"]["forget"]["TOFU_QA_forget"]["args"]["hf_args"]["name"] == split
        assert cfg["eval"]["tofu"]["retain_logs_path"].endswith(f"_retain{100 - int(split[-2:])}/TOFU_EVAL.json")
        assert cfg["model"]["model_args"]["pretrained_model_name_or_path"].startswith("open-unlearning/tofu_")
    muse = {cfg["data_split"]: cfg for cfg in trains if "muse" in cfg["task_name"]}
    assert {k: (v["trainer"]["method_args"]["tau"], v["trainer"]["method_args"]["gamma"]) for k, v in muse.items()} == {
        "News": (2.0, 0.35), "Books": (2.35, 0.001)}
    for cfg in muse.values():
        assert cfg["trainer"]["args"]["num_train_epochs"] == 10
        assert cfg["trainer"]["args"]["lr_scheduler_type"] == "constant"
    evals = [r for argv, r in zip(commands, results) if argv[1] == "src/eval.py"]
    assert all(cfg["model"]["model_args"]["pretrained_model_name_or_path"].startswith("saves/unlearn/")
               for cfg in evals)


@pytest.mark.parametrize("script", ["src/train.py", "src/eval.py"])
def test_first_command_with_cfg_job(commands, run_ou, ou_data, script):
    argv = next(a for a in commands if a[1] == script)
    run = run_ou(Path(script).name, *argv[2:], "--cfg", "job", "--resolve")
    text = "\n" + run.stdout
    cfg = yaml.safe_load(text[text.index("\nmodel:\n") + 1:])
    assert cfg["task_name"] == next(a.split("=", 1)[1] for a in argv if a.startswith("task_name="))
