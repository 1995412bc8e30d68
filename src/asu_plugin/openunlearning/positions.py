"""The model inputs of a batch, with explicit position ids.

Without ``position_ids`` a Hugging Face causal LM numbers the positions 0..T-1 of the padded
batch. With left padding a sample's real tokens then start at the number of pad tokens in
front of them, which depends on the longest sample of *its batch*: the same sample gets other
logits in another batch. Numbering each sample's real tokens from 0 (the cumulative sum of the
attention mask) makes a sample's logits independent of its batch whatever the padding side —
what the teacher cache needs to be exact, and what right padding gives anyway.
"""

from __future__ import annotations

import torch

MODEL_INPUTS = ("input_ids", "attention_mask")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over each row's attended tokens; padding repeats its neighbour's (ignored)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def model_inputs(batch: dict) -> dict:
    """``input_ids``, ``attention_mask`` and ``position_ids`` (when there is a mask) of ``batch``."""
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    if inputs.get("attention_mask") is not None:
        inputs["position_ids"] = position_ids(inputs["attention_mask"])
    return inputs
