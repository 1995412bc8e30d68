"""Tiny models of every family we support, and an *independent* smoothing reference.

The reference never touches attention: forward hooks divide the query projection
(after any query normalisation, or the query slice of a fused qkv projection) of the
selected heads by tau. Softmax(Q K^T s / tau) == Softmax((Q / tau) K^T s), and RoPE is
linear, so this is the textbook definition the patch must reproduce. It finds the attention
modules by each family's own module path (``Family.attention``), never with the package's
layout finder, so it shares no code with what it checks.

A (family, backend) pair that a transformers version cannot build is skipped only when it is
listed in :func:`expected_skips`; any other failure to build fails the test, and so does a
listed pair that builds (the list is stale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import transformers
from packaging.version import Version

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
    attention: str = "model.layers.{}.self_attn"  # module path of layer i's attention


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
        "GPT2Config", "GPT2LMHeadModel", "c_attn", PREFIX,
        dict(vocab_size=96, n_embd=64, n_layer=3, n_head=4, initializer_range=0.15), "transformer.h.{}.attn",
    ),
    "gpt_neox": Family(
        "GPTNeoXConfig", "GPTNeoXForCausalLM", "query_key_value", NEOX, dict(COMMON, intermediate_size=96),
        "gpt_neox.layers.{}.attention",
    ),
    "falcon": Family(
        "FalconConfig", "FalconForCausalLM", "query_key_value", PREFIX, dict(COMMON, multi_query=True, alibi=False),
        "transformer.h.{}.self_attention",
    ),
    "opt": Family(
        "OPTConfig",
        "OPTForCausalLM",
        "q_proj",
        SPLIT,
        dict(COMMON, ffn_dim=96, word_embed_proj_dim=64, max_position_embeddings=64, init_std=0.15),
        "model.decoder.layers.{}.self_attn",
    ),
}
BACKENDS = ("eager", "sdpa")
VERSION = transformers.__version__


def expected_skips(version: str = VERSION) -> dict[tuple[str, str], str]:
    """The (family, backend) pairs transformers ``version`` cannot build, with the reason."""
    v = Version(version)
    skips = {}
    if v < Version("4.51"):
        skips.update({("qwen3", backend): "Qwen3 arrived in transformers 4.51" for backend in BACKENDS})
    if v < Version("4.48"):
        skips[("opt", "sdpa")] = "OPT has no SDPA attention before transformers 4.48"
    if v >= Version("5.0"):
        skips[("gemma2", "sdpa")] = "transformers 5 builds Gemma2 (logit soft-capping) with eager attention only"
    return skips


def build(name: str, backend: str, seed: int = 0) -> torch.nn.Module:
    """A tiny fp32 model of ``name`` with weights large enough for peaked attention."""
    family = FAMILIES[name]
    where = f"{name} / transformers {VERSION} / {backend}"
    expected = expected_skips().get((name, backend))
    torch.manual_seed(seed)
    try:
        config = getattr(transformers, family.config)(**family.kwargs)
        model = getattr(transformers, family.model)._from_config(config, attn_implementation=backend)
    except (AttributeError, ValueError, ImportError, NotImplementedError) as exc:
        if expected is None:
            raise AssertionError(f"{where} cannot be built, and no skip is expected: {type(exc).__name__}: {exc}") from exc
        pytest.skip(f"{where}: {expected}")
    if expected is not None:
        raise AssertionError(f"{where} builds, but expected_skips() says it cannot ({expected}): update the list")
    return model.eval()


def head_dim(model) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_modules(model, name: str) -> list:
    """Layer i's attention module, by the family's own module path."""
    path = FAMILIES[name].attention
    return [model.get_submodule(path.format(i)) for i in range(model.config.num_hidden_layers)]


def reference_hooks(model, name: str, tau: float, layers=None, heads=None):
    """Register hooks dividing the selected heads' queries by tau; return the handles."""
    family = FAMILIES[name]
    num_heads = model.config.num_attention_heads
    dim = head_dim(model)
    heads = list(range(num_heads)) if heads is None else list(heads)
    modules = attention_modules(model, name)
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
