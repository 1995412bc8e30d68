"""One OU training run of bench/gpu_check.py, timed: OU's own ``src/train.py`` (run in the OU checkout,
cwd), with a callback that times every optimizer step on the GPU and reads the peak GPU memory.

    python bench/gpu_ou_run.py build-model MODEL_DIR TOKENIZER_DIR     # the ~1B Llama, from a config
    python bench/gpu_ou_run.py train OUT_JSON -- <train.py overrides>   # OU's train.py + timing

The callback is added by wrapping OU's ``trainer.load_trainer`` before ``src/train.py`` imports
it; nothing else of OU changes. Prints one ``GPU_CHECK_JSON {...}`` line as well.
"""

from __future__ import annotations

import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

# a Llama-3.2-1B-like shape (16 layers, GQA 32/8, 8192 MLP) on SmolLM2's 49152-token vocabulary: 1.07 B parameters
MODEL_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=True)
# ASU_GPU_CHECK_DEVICE=cpu: a tiny model, to run the stage's code paths here
CPU_SHAPE = dict(MODEL_SHAPE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
WARMUP_STEPS = 2  # not timed: optimizer state allocation, kernel selection


def build_model(model_dir: str, tokenizer_dir: str) -> dict:
    """A randomly initialised ~1B Llama (bf16) saved with the tokenizer: no hub download."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = MODEL_SHAPE if os.environ.get("ASU_GPU_CHECK_DEVICE") != "cpu" else CPU_SHAPE
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "seconds": time.perf_counter() - started,
            "shape": shape, "vocab": len(tokenizer)}


def _timing_callback(record: dict):
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()  # (a CPU run only checks the wiring: no memory figures)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (GPU synchronised) and the peak GPU memory of training."""

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                record["memory_before_training_gib"] = torch.cuda.memory_allocated() / 2**30

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            record["step_seconds"].append(time.perf_counter() - self.started)

        def on_train_end(self, args, state, control, **kwargs):
            record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            record["log_history"] = state.log_history

    return StepTimer()


def train(out_json: str, overrides: list[str]) -> dict:
    sys.path.insert(0, str(Path.cwd() / "src"))  # OU's src, as `python src/train.py` has it
    import torch
    import trainer as ou_trainer  # OU's package; the Hydra plugin registers the ASU trainers from it

    record = {"overrides": overrides, "step_seconds": [],
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    original = ou_trainer.load_trainer

    def load_trainer(*args, **kwargs):
        built, trainer_args = original(*args, **kwargs)
        built.add_callback(_timing_callback(record))
        record["trainer"] = type(built).__name__
        record["frozen_attention"] = getattr(built, "_attention", None)
        return built, trainer_args

    ou_trainer.load_trainer = load_trainer
    sys.argv = ["src/train.py", *overrides]
    started = time.perf_counter()
    try:
        runpy.run_path("src/train.py", run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    record["wall_seconds"] = time.perf_counter() - started
    timed = record["step_seconds"][WARMUP_STEPS:]
    record["median_step_seconds"] = statistics.median(timed) if timed else None
    Path(out_json).write_text(json.dumps(record, indent=1, default=str))
    return record


def main(argv: list[str]) -> None:
    if argv[:1] == ["build-model"]:
        result = build_model(argv[1], argv[2])
    elif argv[:1] == ["train"] and "--" in argv:
        result = train(argv[1], argv[argv.index("--") + 1:])
    else:
        raise SystemExit(__doc__)
    print("GPU_CHECK_JSON " + json.dumps({k: v for k, v in result.items() if k != "log_history"}, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
