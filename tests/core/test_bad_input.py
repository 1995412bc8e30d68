"""Every refusal is a SmoothingError (a ValueError) whose message names the fix."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch import nn

from asu_plugin import SmoothingError, smoothed_attention
from asu_plugin.core.selection import select

from .families import build, padded_batch


@pytest.fixture(scope="module")
def llama():
    return build("llama", "sdpa")


@pytest.mark.parametrize(
    "tau,match",
    [
        (0.5, "sharpen attention"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("2.3", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
    ],
)
def test_bad_tau(llama, tau, match, reliability):
    with pytest.raises(SmoothingError, match=match) as error:
        with smoothed_attention(llama, tau):
            pass
    reliability(f"tau={tau!r}", f"SmoothingError: {error.value}")


@pytest.mark.parametrize(
    "layers,match",
    [
        (3, r"layers \[3\] out of range.*valid: 0-2"),
        ([-1], r"layers \[-1\] out of range"),
        ("1-7", r"out of range"),
        ("1..2", "cannot parse layers"),
        ("2-1", "reversed"),
        ([], "empty layers selection"),
        ([1.5], "integer indices"),
    ],
)
def test_bad_layers(llama, layers, match, reliability):
    with pytest.raises(SmoothingError, match=match) as error:
        select(llama, 2.0, layers=layers)
    reliability(f"layers={layers!r} (3-layer model)", f"SmoothingError: {error.value}")


@pytest.mark.parametrize("heads,match", [([4], r"heads \[4\] out of range.*4 heads"), ([], "empty heads")])
def test_bad_heads(llama, heads, match, reliability):
    with pytest.raises(SmoothingError, match=match) as error:
        with smoothed_attention(llama, 2.0, heads=heads):
            pass
    reliability(f"heads={heads!r} (4-head model)", f"SmoothingError: {error.value}")


def test_layer_string_forms(llama):
    assert select(llama, 2.0, layers="0,2").layers == (0, 2)
    assert select(llama, 2.0, layers=" 1 - 2 ").layers == (1, 2)
    assert select(llama, 2.0, layers=1).layers == (1,)
    assert select(llama, 2.0, heads=[0, 1, 2, 3]).heads is None  # all heads == None


def test_error_is_a_value_error():
    assert issubclass(SmoothingError, ValueError)


def test_model_without_attention(reliability):
    config = transformers.MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=4)
    model = transformers.MambaForCausalLM(config)
    with pytest.raises(SmoothingError, match="no attention modules found") as error:
        with smoothed_attention(model, 2.0):
            pass
    reliability("architecture without attention (Mamba)", f"SmoothingError: {error.value}")


class _LinearAttention(nn.Module):
    """A real (if unusual) attention: normalised exp scores, no softmax / SDPA call."""

    def __init__(self, dim, decoy_softmax):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.decoy_softmax = decoy_softmax

    def forward(self, hidden):
        q, k, v = self.qkv(hidden).chunk(3, -1)
        scores = q @ k.transpose(-1, -2)
        if self.decoy_softmax:  # calls softmax but never uses it: smoothing reaches nothing
            torch.softmax(scores, -1)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        return (weights / weights.sum(-1, keepdim=True)) @ v


class _Layer(nn.Module):
    def __init__(self, dim, decoy):
        super().__init__()
        self.self_attn = _LinearAttention(dim, decoy)

    def forward(self, hidden):
        return hidden + self.self_attn(hidden)


class TinyExpAttentionLM(transformers.PreTrainedModel):
    config_class = transformers.PretrainedConfig

    def __init__(self, config, decoy=False):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Layer(config.hidden_size, decoy) for _ in range(config.num_hidden_layers))
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_ids, attention_mask=None, **_):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return transformers.modeling_outputs.CausalLMOutput(logits=self.head(hidden))


def _exp_model(decoy):
    config = transformers.PretrainedConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=1)
    return TinyExpAttentionLM(config, decoy=decoy).eval()


def test_unreachable_attention_is_refused(reliability):
    with pytest.raises(SmoothingError, match=r"TinyExpAttentionLM layer 0 .*no call that smoothing can reach") as error:
        with smoothed_attention(_exp_model(decoy=False), 2.0):
            pass
    reliability("attention the patch cannot reach (exp-normalised, no softmax / SDPA)", f"SmoothingError: {error.value}")


def test_silent_no_op_is_caught_by_the_probe(reliability):
    with pytest.raises(SmoothingError, match=r"TinyExpAttentionLM.*left the logits unchanged.*sdpa' or 'eager'") as error:
        with smoothed_attention(_exp_model(decoy=True), 2.0):
            pass
    reliability("smoothing that would change nothing (decoy softmax; self-check)", f"SmoothingError: {error.value}")


def test_openunlearning_without_a_registry_is_named(reliability):
    """OU importable but its trainer package has no TRAINER_REGISTRY (an API change)."""
    import types

    from asu_plugin import register

    changed = types.ModuleType("trainer")
    changed.__file__ = "/ou/src/trainer/__init__.py"
    with pytest.raises(RuntimeError, match="has no TRAINER_REGISTRY dict: its API changed") as error:
        register(changed)
    reliability("OU importable, TRAINER_REGISTRY absent (API change)", f"RuntimeError: {error.value}")


def test_self_check_runs_once_per_model_and_selection(llama):
    calls = []
    handle = llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        ids, mask = padded_batch(llama.config.vocab_size, "left")
        for _ in range(3):
            with torch.no_grad(), smoothed_attention(llama, 1.7, layers=[0]):
                llama(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    assert len(calls) == 2 + 3  # one probe (plain + smoothed), then three real calls
