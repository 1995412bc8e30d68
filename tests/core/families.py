"""Tiny models of every family we support, and an *independent* smoothing reference.

The reference never touches attention: forward hooks divide the query projection
(after any query normalisation, or the query slice of a fused qkv projection) of the
selected heads by tau. Softmax(Q K^T s / tau) == Softmax((Q / tau) K^T s), and RoPE is
linear, so this is the textbook definition the patch must reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import transformers

# query layouts of the module whose output carries the queries
SPLIT = "split"  # (B, T, H*D) or (B, T, H, D): queries only
PREFIX = "prefix"  # fused qkv, the first H*D columns are the queries
NEOX = "neox"  # fused qkv, per head [q | k | v] of D columns each


@dataclass
class Family:
    config: str
    model: str
    query_module: str  # attribute of the attention module
    layout: str
    kwargs: dict = field(default_factory=dict)


COMMON = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, initializer_range=0.15)
LLAMA_LIKE = dict(COMMON, intermediate_size=96, num_key_value_heads=2)

FAMILIES = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", "q_proj", SPLIT, LLAMA_LIKE),
    "mistral": Family("MistralConfig", "MistralForCausalLM", "q_proj", SPLIT, dict(LLAMA_LIKE, sliding_window=None)),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", "q_proj", SPLIT, LLAMA_LIKE),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", "q_norm", SPLIT, dict(LLAMA_LIKE, head_dim=16)),
    "olmoe": Family(
        "OlmoeConfig", "OlmoeForCausalLM", "q_norm", SPLIT, dict(LLAMA_LIKE, num_experts=4, num_experts_per_tok=2)
    ),
    "cohere": Family("CohereConfig", "CohereForCausalLM", "q_norm", SPLIT, dict(LLAMA_LIKE, use_qk_norm=True)),
    "gemma2": Family(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        "q_proj",
        SPLIT,
        dict(LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=5.0, sliding_window=4),
    ),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", "qkv_proj", PREFIX, dict(LLAMA_LIKE, pad_token_id=0)),
    "gpt2": Family(
        "GPT2Config", "GPT2LMHeadModel", "c_attn", PREFIX, dict(vocab_size=96, n_embd=64, n_layer=3, n_head=4, initializer_range=0.15)
    ),
    "gpt_neox": Family("GPTNeoXConfig", "GPTNeoXForCausalLM", "query_key_value", NEOX, dict(COMMON, intermediate_size=96)),
    "falcon": Family(
        "FalconConfig", "FalconForCausalLM", "query_key_value", PREFIX, dict(COMMON, multi_query=True, alibi=False)
    ),
    "opt": Family(
        "OPTConfig",
        "OPTForCausalLM",
        "q_proj",
        SPLIT,
        dict(COMMON, ffn_dim=96, word_embed_proj_dim=64, max_position_embeddings=64, init_std=0.15),
    ),
}
BACKENDS = ("eager", "sdpa")
VERSION = transformers.__version__


def build(name: str, backend: str, seed: int = 0) -> torch.nn.Module:
    """A tiny fp32 model of ``name`` with weights large enough for peaked attention."""
    family = FAMILIES[name]
    where = f"{name} / transformers {VERSION} / {backend}"
    try:
        config_cls = getattr(transformers, family.config)
        model_cls = getattr(transformers, family.model)
    except AttributeError as exc:
        pytest.skip(f"{where}: {exc}")
    torch.manual_seed(seed)
    try:
        config = config_cls(**family.kwargs)
        model = model_cls._from_config(config, attn_implementation=backend)
    except (ValueError, ImportError, NotImplementedError) as exc:
        pytest.skip(f"{where}: {type(exc).__name__}: {exc}")
    return model.eval()


def head_dim(model) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_modules(model):
    from asu_plugin.core.selection import find_attention_layout

    return find_attention_layout(model).modules


def reference_hooks(model, name: str, tau: float, layers=None, heads=None):
    """Register hooks dividing the selected heads' queries by tau; return the handles."""
    family = FAMILIES[name]
    num_heads = model.config.num_attention_heads
    dim = head_dim(model)
    heads = list(range(num_heads)) if heads is None else list(heads)
    modules = attention_modules(model)
    layers = range(len(modules)) if layers is None else layers

    def hook(_module, _inputs, output):
        out = output.clone()
        if family.layout == SPLIT and out.dim() == 4:  # (B, T, H, D)
            out[..., heads, :] /= tau
            return out
        for h in heads:
            start = h * 3 * dim if family.layout == NEOX else h * dim
            out[..., start : start + dim] /= tau
        return out

    return [getattr(modules[i], family.query_module).register_forward_hook(hook) for i in layers]


def padded_batch(vocab: int, side: str, seed: int = 1):
    """Two rows of different length, padded on ``side`` with an attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[1, :5] = 0
    else:
        mask[1, -5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask
