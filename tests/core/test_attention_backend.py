"""The frozen copy runs attention smoothing can reach, whatever the student's backend.

Each transformers version is tested where it differs (issue 16):

* <= 4.47 (OU's 4.45.1) picks attention classes at build time. Flash-attention cannot be built
  here (no kernel), so a SDPA-built Llama gets flash-attention *modules* swapped in; the copy
  must come out with SDPA modules and config, plain logits equal to a SDPA load of the same
  weights, and smoothed logits equal to the independent query-division reference.
* newer versions look the implementation up at call time: a student whose attention is an
  opaque function registered through ``AttentionInterface`` trains a step against its copy.

The reference shares no code with asu_plugin: forward hooks divide the query projection by tau
(Softmax(Q K^T s / tau) == Softmax((Q / tau) K^T s); RoPE is linear).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from asu_plugin.core.attention_backend import attention_backend, make_reachable, verify_reachable
from asu_plugin.core.errors import SmoothingError
from asu_plugin.core.smoothing import smoothed_attention

TAU = 2.5
CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, initializer_range=0.15)
modeling_llama = transformers.models.llama.modeling_llama


def _model(backend: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(LlamaConfig(**CONFIG), attn_implementation=backend).eval()


def _batch():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # a prompt of 4 tokens
    return ids, mask, labels


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _query_division_logits(model, ids, mask, tau):
    """Reference: every layer's queries divided by tau (hooks on q_proj), nothing else touched."""
    handles = [layer.self_attn.q_proj.register_forward_hook(lambda _m, _i, out: out / tau)
               for layer in model.model.layers]
    try:
        return _logits(model, ids, mask)
    finally:
        for handle in handles:
            handle.remove()


def _sdpa_twin(model) -> LlamaForCausalLM:
    """The same weights in a model built with SDPA (as from_pretrained(..., attn_implementation='sdpa'))."""
    twin = _model("sdpa", seed=99)
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.skipif(not hasattr(modeling_llama, "LlamaFlashAttention2"),
                    reason=f"transformers {transformers.__version__} chooses attention at call time (tested below)")
def test_copy_of_flash_attention_student_gets_sdpa_modules_and_config(tmp_path):
    student = _model("sdpa")
    for index, layer in enumerate(student.model.layers):  # flash-attention modules, as a flash load builds them
        flash = modeling_llama.LlamaFlashAttention2(student.config, layer_idx=index)
        flash.load_state_dict(layer.self_attn.state_dict())
        layer.self_attn = flash
    student.config._attn_implementation = "flash_attention_2"
    ids, mask, _ = _batch()
    with pytest.raises(Exception):  # the swap is real: flash-attention's forward cannot run here
        _logits(student, ids, mask)

    frozen = copy.deepcopy(student)  # what OU's _prepare_ref_model does
    assert make_reachable(frozen) == "sdpa"
    assert {type(layer.self_attn) for layer in frozen.model.layers} == {modeling_llama.LlamaSdpaAttention}
    assert frozen.config._attn_implementation == "sdpa"
    # the student keeps its own backend
    assert {type(layer.self_attn) for layer in student.model.layers} == {modeling_llama.LlamaFlashAttention2}
    assert attention_backend(student) == "flash_attention_2"
    for (name, a), (_, b) in zip(student.named_parameters(), frozen.named_parameters()):
        assert torch.equal(a, b), name

    student.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert (_logits(frozen, ids, mask) - _logits(loaded, ids, mask)).abs().max().item() <= 1e-5
    reference = _query_division_logits(loaded, ids, mask, TAU)
    with smoothed_attention(frozen, TAU):
        smoothed = _logits(frozen, ids, mask)
    assert (smoothed - reference).abs().max().item() <= 1e-5
    assert (smoothed - _logits(loaded, ids, mask)).abs().max().item() > 1e-2  # smoothing did something


def _answer_kl(student_logits, target_logits, labels):
    """KL(target || student) per answer token, averaged per row, then over rows (plain torch)."""
    answer = labels[:, 1:] != -100
    log_s = F.log_softmax(student_logits[:, :-1].float(), -1)
    log_t = F.log_softmax(target_logits[:, :-1].float(), -1)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    return ((per_token * answer).sum(1) / answer.sum(1)).mean()


@pytest.mark.skipif(not hasattr(transformers, "AttentionInterface"),
                    reason=f"transformers {transformers.__version__} has no AttentionInterface")
def test_training_step_with_opaque_student_attention():
    """A student on an opaque kernel (registered through AttentionInterface, invisible to torch
    function modes, as a fused kernel is) trains one step against its SDPA copy."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    calls = {"opaque": 0}

    def opaque_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        calls["opaque"] += 1
        with torch._C.DisableTorchFunction():  # what a CUDA kernel looks like to smoothing: nothing
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
            scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)
            if attention_mask is not None:
                scores = scores + attention_mask[..., : key.shape[-2]]
            out = scores.softmax(-1) @ value
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("asu_test_opaque", opaque_attention)
    AttentionMaskInterface.register("asu_test_opaque", eager_mask)
    student = _model("asu_test_opaque")
    student.train()
    ids, mask, labels = _batch()
    with pytest.raises(SmoothingError, match="no call that smoothing can reach"):
        verify_reachable(copy.deepcopy(student), TAU)  # an unconverted copy cannot be a teacher

    teacher = copy.deepcopy(student)
    assert make_reachable(teacher) == "sdpa" and attention_backend(student) == "asu_test_opaque"
    verify_reachable(teacher, TAU)
    twin = _sdpa_twin(student)
    expected_teacher = _query_division_logits(twin, ids, mask, TAU)
    expected_reference = _logits(twin, ids, mask)

    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    calls["opaque"] = 0
    with torch.no_grad(), smoothed_attention(teacher, TAU):
        teacher_logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
    reference_logits = _logits(teacher, ids, mask)
    assert calls["opaque"] == 0  # the teacher never ran the student's kernel
    student_logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert calls["opaque"] == CONFIG["num_hidden_layers"]
    loss = _answer_kl(student_logits, teacher_logits, labels) + _answer_kl(student_logits, reference_logits, labels)
    loss.backward()
    optimizer.step()

    assert (teacher_logits - expected_teacher).abs().max().item() <= 1e-5
    assert (reference_logits - expected_reference).abs().max().item() <= 1e-5
    assert torch.isfinite(loss) and loss.item() > 0
    moved = max((p.detach() - before[name]).abs().max().item() for name, p in student.named_parameters())
    assert moved > 1e-4
    for (name, a), (_, b) in zip(twin.named_parameters(), teacher.named_parameters()):
        assert torch.equal(a, b), f"the frozen copy moved: {name}"


def _opaque_class(base):
    class OpaqueCustomAttention(base):  # not in any registry, ignores the config: a custom kernel
        def forward(self, *args, **kwargs):
            with torch._C.DisableTorchFunction():
                return super().forward(*args, **kwargs)

    return OpaqueCustomAttention


def test_unreachable_custom_attention_is_refused():
    model = _model("sdpa")
    for layer in model.model.layers:
        layer.self_attn.__class__ = _opaque_class(type(layer.self_attn))
    model.config._attn_implementation = "custom_kernel"
    frozen = copy.deepcopy(model)
    make_reachable(frozen)  # sets the config, but these modules do not read it
    with pytest.raises(SmoothingError, match="no call that smoothing can reach"):
        verify_reachable(frozen, TAU)


@pytest.mark.skipif(not hasattr(transformers, "AttentionInterface"),
                    reason=f"transformers {transformers.__version__} has no AttentionInterface")
def test_smoothed_teacher_handler_loads_a_student_backend_it_can_reach(tmp_path):
    """OU's model configs ask for flash_attention_2; the teacher-scoring handler (model_handler=
    ASUSmoothedTeacher) loads whatever backend is asked for and runs it on one smoothing reaches.
    Here the asked-for backend is an opaque registered kernel, as flash attention is to smoothing."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from asu_plugin.openunlearning.teacher_model import ASUSmoothedTeacher

    def opaque_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        with torch._C.DisableTorchFunction():
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
            scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)
            if attention_mask is not None:
                scores = scores + attention_mask[..., : key.shape[-2]]
            return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None

    AttentionInterface.register("asu_test_opaque_handler", opaque_attention)
    AttentionMaskInterface.register("asu_test_opaque_handler", eager_mask)
    _model("sdpa").save_pretrained(tmp_path)
    teacher = ASUSmoothedTeacher.from_pretrained(str(tmp_path), attn_implementation="asu_test_opaque_handler",
                                                 asu_tau=TAU)
    assert attention_backend(teacher) == "sdpa" and teacher.asu_smoothing["tau"] == TAU
    ids, mask, _ = _batch()
    expected = _query_division_logits(_sdpa_twin(teacher), ids, mask, TAU)
    assert (_logits(teacher, ids, mask) - expected).abs().max().item() <= 1e-5
