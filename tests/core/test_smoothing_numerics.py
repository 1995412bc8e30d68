"""smoothed_attention against the independent query-division reference, every family/backend."""

from __future__ import annotations

import pytest
import torch

from asu_plugin import smoothed_attention

from .families import BACKENDS, FAMILIES, build, padded_batch, reference_hooks

TOL = 1e-5
SELECTIONS = {
    "all": dict(layers=None, heads=None),
    "layer_subset": dict(layers=[0, 2], heads=None),
    "head_subset": dict(layers="1-2", heads=[0, 3]),
}
CASES = [(f, b) for f in FAMILIES for b in BACKENDS]


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _layer_ids(spec):
    if isinstance(spec, str):
        start, stop = spec.split("-")
        return list(range(int(start), int(stop) + 1))
    return spec


@pytest.mark.parametrize("family,backend", CASES)
def test_matches_query_division_reference(family, backend):
    model = build(family, backend)
    for side in ("left", "right"):
        ids, mask = padded_batch(model.config.vocab_size, side)
        real = mask.bool()
        plain = _logits(model, ids, mask)
        for tau in (1.5, 2.3, 4.0):
            for name, sel in SELECTIONS.items():
                with smoothed_attention(model, tau, **sel):
                    smoothed = _logits(model, ids, mask)
                handles = reference_hooks(model, family, tau, _layer_ids(sel["layers"]), sel["heads"])
                try:
                    reference = _logits(model, ids, mask)
                finally:
                    for handle in handles:
                        handle.remove()
                diff = (smoothed - reference)[real].abs().max().item()
                change = (smoothed - plain)[real].abs().max().item()
                assert diff <= TOL, f"{family}/{backend} {side} tau={tau} {name}: |patch - ref| = {diff}"
                assert change > 100 * TOL, f"{family}/{backend} {side} tau={tau} {name}: no visible change"
        # outside the context the model is exactly as before
        assert torch.equal(_logits(model, ids, mask), plain)


@pytest.mark.parametrize("family,backend", CASES)
def test_tau_one_is_identity(family, backend):
    model = build(family, backend)
    ids, mask = padded_batch(model.config.vocab_size, "left")
    plain = _logits(model, ids, mask)
    with smoothed_attention(model, 1.0):
        assert torch.equal(_logits(model, ids, mask), plain)


def _entropies(model, ids, mask):
    with torch.no_grad():
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    out = []
    for probs in attentions:  # (B, H, T, S), rows of real query tokens
        probs = probs[mask.bool()[:, None, :].expand(-1, probs.shape[1], -1)]
        out.append(-(probs * probs.clamp_min(1e-30).log()).sum(-1))  # (rows,)
    return out


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "falcon"])
def test_entropy_rises_with_tau_on_selected_layers_only(family):
    model = build(family, "eager")
    ids, mask = padded_batch(model.config.vocab_size, "left")
    base = _entropies(model, ids, mask)
    previous = [e.mean() for e in base]
    for tau in (1.5, 2.3, 4.0):
        with smoothed_attention(model, tau, layers=[1, 2]):
            entropies = _entropies(model, ids, mask)
        assert torch.equal(entropies[0], base[0]), "unselected layer before the selection changed"
        for layer in (1, 2):
            assert entropies[layer].mean() > previous[layer] + 1e-4, f"layer {layer} entropy did not rise at tau={tau}"
            previous[layer] = entropies[layer].mean()


def test_head_subset_leaves_other_heads_untouched():
    model = build("llama", "eager")
    ids, mask = padded_batch(model.config.vocab_size, "right")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
        with smoothed_attention(model, 2.3, layers=[0], heads=[1, 2]):
            smoothed = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    assert torch.equal(plain[:, [0, 3]], smoothed[:, [0, 3]])
    assert not torch.allclose(plain[:, [1, 2]], smoothed[:, [1, 2]])


def test_nesting_multiplies_and_restores():
    model = build("llama", "sdpa")
    ids, mask = padded_batch(model.config.vocab_size, "left")
    plain = _logits(model, ids, mask)
    with smoothed_attention(model, 3.0):
        single = _logits(model, ids, mask)
    with smoothed_attention(model, 2.0):
        outer = _logits(model, ids, mask)
        with smoothed_attention(model, 1.5):
            nested = _logits(model, ids, mask)
        assert torch.equal(_logits(model, ids, mask), outer)
    assert (nested - single).abs().max() <= TOL
    assert torch.equal(_logits(model, ids, mask), plain)


def test_exception_in_body_restores_model():
    model = build("qwen2", "sdpa")
    ids, mask = padded_batch(model.config.vocab_size, "left")
    plain = _logits(model, ids, mask)
    with pytest.raises(RuntimeError, match="boom"):
        with smoothed_attention(model, 2.3):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, ids, mask), plain)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_one_model_is_teacher_and_reference_with_gradients():
    """The same object, toggled, gives both targets; smoothing also works with autograd on."""
    model = build("mistral", "sdpa")
    ids, mask = padded_batch(model.config.vocab_size, "right")
    reference = model(input_ids=ids, attention_mask=mask).logits
    with smoothed_attention(model, 2.3):
        teacher = model(input_ids=ids, attention_mask=mask).logits
    teacher.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert not torch.allclose(teacher, reference)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
