"""ALiBi (Falcon with ``alibi=True``): the position bias sits inside the attention softmax, so
"softmax at temperature tau" tempers it together with the scores, on every backend.

Independent reference: the model's own ALiBi builder patched to return bias / tau, plus the
queries of every layer divided by tau (hooks on ``query_key_value``): then every softmax input
Q K^T s + bias becomes (Q K^T s + bias) / tau, with no attention code of ours involved.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from asu_plugin import smoothed_attention

from .families import padded_batch

falcon = pytest.importorskip("transformers.models.falcon.modeling_falcon")
TOL = 1e-5


def _model(backend: str):
    torch.manual_seed(0)
    config = transformers.FalconConfig(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                       initializer_range=0.15, alibi=True, multi_query=False, new_decoder_architecture=False)
    return transformers.FalconForCausalLM._from_config(config, attn_implementation=backend).eval()


def _reference(model, ids, mask, tau):
    dim = model.config.hidden_size // model.config.num_attention_heads
    heads = model.config.num_attention_heads

    def divide_queries(_module, _inputs, output):
        out = output.clone().view(*output.shape[:-1], heads, 3, dim)  # per head [q | k | v]
        out[..., 0, :] /= tau
        return out.view_as(output)

    original = falcon.build_alibi_tensor
    handles = [layer.self_attention.query_key_value.register_forward_hook(divide_queries)
               for layer in model.transformer.h]
    falcon.build_alibi_tensor = lambda *args, **kwargs: original(*args, **kwargs) / tau
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        falcon.build_alibi_tensor = original
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_alibi_bias_is_tempered_with_the_scores(backend):
    model = _model(backend)
    ids, mask = padded_batch(model.config.vocab_size, "right")
    real = mask.bool()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    for tau in (1.5, 2.3):
        with torch.no_grad(), smoothed_attention(model, tau):
            smoothed = model(input_ids=ids, attention_mask=mask).logits
        reference = _reference(model, ids, mask, tau)
        assert (smoothed - plain)[real].abs().max() > 1e-3
        assert (smoothed - reference)[real].abs().max().item() <= TOL, f"{backend} tau={tau}"
