"""What the probe measures on a model: teacher-forced NLL of answer tokens, and greedy answers.

Both run plain or inside :func:`~asu_plugin.core.smoothing.smoothed_attention`: the context
patches the attention modules, so a call made inside it sees the smoothed model. Generation
uses ``model.generate`` with its KV cache, so the smoothing applies to the prefill and to every
decoding step (tested against step-by-step full forwards in ``tests/test_probe.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .data import Example
from .errors import ProbeError


def load_model(model_dir: str | os.PathLike):
    """Tokenizer and fp32 SDPA model from a transformers directory (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        from ..models import default_model_dir

        hint = (
            " Build the default model with `asu-prepare-model prepare-smollm2`."
            if path == default_model_dir()
            else " Pass --model DIR (a transformers model directory)."
        )
        raise ProbeError(f"model directory {path} has no config.json.{hint}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.eval()
    return model, tokenizer


def padding_token_id(tokenizer) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS, else 0 (the padded
    positions are masked out, so any id works; a real one keeps embeddings in range)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def per_token_answer_nll(model, examples: Sequence[Example], pad_id: int = 0) -> list[list[float]]:
    """Teacher-forced NLL (nats) of every answer token of each example, one list per example;
    one right-padded batch.

    Not :func:`asu_plugin.core.loss.answer_nll` (the trainers' batch mean over label tokens):
    this keeps each token's value, so the probe can average them per token class.
    """
    width = max(len(e.input_ids) for e in examples)
    device = _device(model)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids, device=device)
        mask[row, : len(e.input_ids)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for row, e in enumerate(examples):
        pos = torch.tensor(e.answer_positions, device=device)
        rows = logits[row, pos - 1].float()  # logits at t-1 predict token t
        nll = torch.nn.functional.cross_entropy(rows, ids[row, pos], reduction="none")
        out.append([float(v) for v in nll])
    return out


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: Optional[int],
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy continuation of each prompt with ``model.generate`` and its KV cache (left-padded batch).

    Call it inside :func:`smoothed_attention` for the smoothed teacher: the context patches the
    attention modules, so the prefill and every cached decoding step run smoothed. Returns the
    new tokens of each prompt, cut after the first EOS.
    """
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    device = _device(model)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p), device=device)
        mask[row, width - len(p) :] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    result = []
    for row in out[:, width:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        result.append(row)
    return result
