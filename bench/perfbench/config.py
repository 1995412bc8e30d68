"""The two configurations of the benchmark: the full run on SmolLM2-135M and the quick smoke run.

A configuration is plain JSON (it is stored in perf.json's ``meta.config``, and a partial run
merges into an earlier perf.json only when both were made with the same configuration).
"""

from __future__ import annotations

import copy
from pathlib import Path

DEFAULT_MODEL = "~/.cache/asu-plugin/models/SmolLM2-135M-Instruct"
IGNORE_INDEX = -100
MB = 2**20

# Trainer settings: ASU as in configs/trainer/ASU_*.yaml, NPO as in OU's configs/trainer/NPO.yaml.
ASU_ARGS = {"tau": 2.3, "gamma": 0.1, "alpha": 1.0}
NPO_ARGS = {"beta": 0.1, "gamma": 1.0, "alpha": 1.0}
GRADDIFF_ARGS = {"gamma": 1.0, "alpha": 1.0, "retain_loss_type": "NLL"}  # OU's configs/trainer/GradDiff.yaml
# LoRA as in issue 17's example (the same adapters for ASU and for the NPO baseline)
LORA_ARGS = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

FULL = {
    "quick": False,
    "model": "smollm2",
    "tau": ASU_ARGS["tau"],
    "teacher": {"backends": ["sdpa", "eager"], "seqs": [256, 1024], "batch": 1, "reps": 11, "warmup": 1,
                "fixed_seq": 16, "fixed_reps": 41},
    "step": {"batch": 4, "seq": 256, "prompt": 128, "reps": 5, "warmup": 1, "rss_reps": 5},
    "loss": {"vocab": 49152, "seqs": [256, 512, 1024], "batch": 4, "reps": 5},
    "scaling": {"answers": [128, 256, 512, 1024], "prompt": 32, "batch": 1, "methods": ["ASU_KL", "NPO_KL"],
                "reps": 5, "warmup": 1},
    "goals": {"teacher_sdpa": 1.03, "step_time": 1.00, "step_rss": 1.05, "loss_mem": 0.25,
              "loss_value": 1e-6, "cache_time": 1.05, "cache_rss": 1.02, "lora_rss": 0.75},
}
QUICK = {
    **FULL,
    "quick": True,
    "model": "tiny",
    "threads": 1,  # a smoke run on a shared machine: one thread avoids OpenMP stalls under contention
    "tiny": {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "teacher": {"backends": ["sdpa", "eager"], "seqs": [32, 64], "batch": 1, "reps": 2, "warmup": 1,
                "fixed_seq": 8, "fixed_reps": 3},
    "step": {"batch": 4, "seq": 32, "prompt": 16, "reps": 2, "warmup": 1, "rss_reps": 2},
    "loss": {"vocab": 4096, "seqs": [32, 64], "batch": 2, "reps": 2},
    "scaling": {"answers": [8, 16, 32], "prompt": 8, "batch": 1, "methods": ["ASU_KL", "NPO_KL"],
                "reps": 2, "warmup": 1},
}
REPEATED_SECTIONS = ("teacher", "step", "scaling", "loss")  # the sections --reps overrides


def make_config(quick: bool, model: str, reps: int = 0, threads: int = 0) -> dict:
    """A deep copy of QUICK or FULL with the model path and the command line's overrides."""
    cfg = copy.deepcopy(QUICK if quick else FULL)
    cfg["model_path"] = str(Path(model).expanduser())
    if reps:
        for section in REPEATED_SECTIONS:
            cfg[section]["reps"] = max(reps, 1)
    if threads:
        cfg["threads"] = threads
    return cfg
