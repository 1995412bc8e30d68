"""The stages of bench/gpu_check.py that run on the machine's own transformers (5.x there), each
returning a JSON-able dict. Run one with ``python bench/gpu_stages.py core_numerics|non_sdpa_student``.

* ``core_numerics``: smoothing on CUDA in fp32 and bf16 against the independent reference (forward
  hooks dividing the query projection by tau; no asu_plugin code), Llama / Qwen2 (SDPA, eager) and
  Gemma2 (eager, soft-capping), all heads and a head subset; ``token_kl`` against plain torch.
* ``non_sdpa_student [asu_opaque_kernel|flex_attention]``: a student on attention smoothing cannot
  reach — an opaque kernel registered through ``AttentionInterface`` (torch's fused SDPA kernels
  called out of sight of torch function modes, as a flash-attention kernel is), or transformers'
  ``flex_attention`` — trains steps against its frozen copy, switched to SDPA by
  :func:`asu_plugin.core.attention_backend.make_reachable`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

TAU = 2.3
HEAD_SUBSET = (0, 3)
# a CPU run (ASU_GPU_CHECK_DEVICE=cpu) only exercises the code paths; figures count on a GPU
DEVICE = os.environ.get("ASU_GPU_CHECK_DEVICE") or "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _batch(vocab: int, rows: int = 4, length: int = 96, device=None):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -length // 3:] = 0  # right padding on one row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : length // 3] = -100  # a prompt
    device = device or DEVICE
    return ids.to(device), mask.to(device), labels.to(device)


def _query_division(model, tau: float, heads=None):
    """Reference: hooks dividing the selected heads' queries by tau in every layer."""
    layers = model.model.layers
    dim = model.config.head_dim if getattr(model.config, "head_dim", None) else (
        model.config.hidden_size // model.config.num_attention_heads)

    def hook(_module, _inputs, output):
        if heads is None:
            return output / tau
        out = output.clone().unflatten(-1, (-1, dim))
        out[..., list(heads), :] /= tau
        return out.flatten(-2)

    return [layer.self_attn.q_proj.register_forward_hook(hook) for layer in layers]


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def _family(name: str, backend: str, dtype):
    import transformers

    common = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, initializer_range=0.1)
    config = {
        "llama": lambda: transformers.LlamaConfig(**common),
        "qwen2": lambda: transformers.Qwen2Config(**common),
        "gemma2": lambda: transformers.Gemma2Config(**common, head_dim=32, query_pre_attn_scalar=48,
                                                    attn_logit_softcapping=20.0, sliding_window=64),
    }[name]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=backend, torch_dtype=dtype)
    return model.to(DEVICE).eval()


def core_numerics() -> dict:
    from asu_plugin import smoothed_attention, token_kl

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, ok = [], True
    for name, backend in (("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("gemma2", "eager")):
        for heads in (None, HEAD_SUBSET):
            fp32 = _family(name, backend, torch.float32)
            ids, mask, _ = _batch(fp32.config.vocab_size)
            real = mask.bool()
            handles = _query_division(fp32, TAU, heads)
            reference = _logits(fp32, ids, mask)[real]
            for handle in handles:
                handle.remove()
            with smoothed_attention(fp32, TAU, heads=list(heads) if heads else None):
                patched = _logits(fp32, ids, mask)[real]
            bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
            handles = _query_division(bf16, TAU, heads)
            reference_bf16 = _logits(bf16, ids, mask)[real]
            for handle in handles:
                handle.remove()
            with smoothed_attention(bf16, TAU, heads=list(heads) if heads else None):
                patched_bf16 = _logits(bf16, ids, mask)[real]
            row = {
                "family": name, "backend": backend, "heads": "all" if heads is None else list(heads),
                "fp32_max_diff": (patched - reference).abs().max().item(),
                "bf16_max_diff_to_fp32_reference": (patched_bf16 - reference).abs().max().item(),
                "bf16_reference_max_diff_to_fp32_reference": (reference_bf16 - reference).abs().max().item(),
                "smoothing_effect": (patched - _logits(fp32, ids, mask)[real]).abs().max().item(),
            }
            # fp32 matches the reference; bf16 is as close to the fp32 reference as bf16 itself gets
            row["passed"] = (row["fp32_max_diff"] <= 1e-4 and row["smoothing_effect"] > 1e-2 and
                             row["bf16_max_diff_to_fp32_reference"] <= 2 * row["bf16_reference_max_diff_to_fp32_reference"] + 1e-2)
            ok &= row["passed"]
            rows.append(row)
    kl_rows = []
    for dtype in (torch.float32, torch.bfloat16):
        generator = torch.Generator().manual_seed(2)
        student = torch.randn(4, 128, 32000, generator=generator).to(DEVICE, dtype)
        target = torch.randn(4, 128, 32000, generator=generator).to(DEVICE, dtype)
        _, _, labels = _batch(32000, length=128)
        ours = token_kl(student, target, labels).item()
        answer = labels[:, 1:] != -100
        log_s, log_t = F.log_softmax(student[:, :-1].double(), -1), F.log_softmax(target[:, :-1].double(), -1)
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
        plain = ((per_token * answer).sum(1) / answer.sum(1)).mean().item()
        kl_rows.append({"dtype": str(dtype), "token_kl": ours, "float64_reference": plain,
                        "relative_diff": abs(ours - plain) / abs(plain), "passed": abs(ours - plain) / abs(plain) <= 1e-5})
        ok &= kl_rows[-1]["passed"]
    return {"passed": bool(ok), "tau": TAU, "smoothing": rows, "token_kl": kl_rows}


def _register_opaque():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    calls = {"n": 0}

    def opaque_kernel(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        calls["n"] += 1
        with torch._C.DisableTorchFunction():  # torch's fused kernels, invisible to smoothing as flash-attention is
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                 enable_gqa=True, is_causal=attention_mask is None)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("asu_opaque_kernel", opaque_kernel)
    AttentionMaskInterface.register("asu_opaque_kernel", sdpa_mask)
    return calls


def non_sdpa_student(backend: str = "asu_opaque_kernel", steps: int = 4) -> dict:
    import transformers

    from asu_plugin import SmoothingError, smoothed_attention, token_kl
    from asu_plugin.core.attention_backend import attention_backend, make_reachable, verify_reachable

    calls = _register_opaque()
    size = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, length=512)
    if DEVICE == "cpu":  # the code paths only
        size = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, length=64)
    length = size.pop("length")
    # initializer_range 0.08: attention peaked enough for smoothing to move the logits (0.02 is near uniform)
    config = transformers.LlamaConfig(**size, num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=1024,
                                      initializer_range=0.08)
    ids, mask, labels = _batch(config.vocab_size, rows=4, length=length)
    results, ok = {}, True
    for backend in (backend,):
        row = {"student_backend": backend}
        try:
            torch.manual_seed(0)
            student = transformers.LlamaForCausalLM._from_config(config, attn_implementation=backend,
                                                                 torch_dtype=torch.bfloat16).to(DEVICE)
            try:
                verify_reachable(copy.deepcopy(student), TAU)
                row["unconverted_copy_refused"] = False
            except SmoothingError:
                row["unconverted_copy_refused"] = True
            teacher = copy.deepcopy(student).eval().requires_grad_(False)
            row["teacher_backend"] = make_reachable(teacher)
            verify_reachable(teacher, TAU)
            row["student_backend_after"] = attention_backend(student)
            handles = _query_division(teacher, TAU)
            reference = _logits(teacher, ids, mask)
            for handle in handles:
                handle.remove()
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
            losses, seconds = [], []
            calls["n"] = 0
            for _ in range(steps):
                _sync()
                started = time.perf_counter()
                with torch.no_grad(), smoothed_attention(teacher, TAU):
                    smoothed = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
                plain = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits.detach()
                logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss = token_kl(logits, smoothed, labels) + token_kl(logits, plain, labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _sync()
                seconds.append(time.perf_counter() - started)
                losses.append(loss.item())
            row.update({"losses": losses, "step_seconds": seconds, "opaque_calls": calls["n"]})
            real = mask.bool()
            with smoothed_attention(teacher, TAU):  # the frozen teacher against its query-division reference
                smoothed_now = _logits(teacher, ids, mask)
            row["teacher_max_diff_to_reference_bf16"] = (smoothed_now - reference)[real].abs().max().item()
            row["smoothing_effect"] = (smoothed_now - _logits(teacher, ids, mask))[real].abs().max().item()
            row["passed"] = (row["teacher_backend"] == "sdpa" and row["student_backend_after"] == backend and
                             all(map(lambda v: v == v and abs(v) < float("inf"), losses)) and
                             row["teacher_max_diff_to_reference_bf16"] <= 0.25)
        except Exception as error:  # reported, and the other student still runs
            row.update({"passed": False, "error": f"{type(error).__name__}: {error}"[:2000]})
        ok &= row["passed"]
        results[backend] = row
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return {"passed": bool(ok), "tau": TAU, "students": results}


if __name__ == "__main__":
    stage = {"core_numerics": core_numerics, "non_sdpa_student": non_sdpa_student}[sys.argv[1]]
    print("GPU_CHECK_JSON " + json.dumps(stage(*sys.argv[2:])))
