"""token_kl against a hand-written double loop, gradcheck, bf16 and edge cases."""

from __future__ import annotations

import math

import torch

from asu_plugin import token_kl
from asu_plugin.core import loss as loss_module


def _double_loop(student, target, labels):
    """The definition, one sample and one token at a time, in float64."""
    per_sample = []
    for b in range(student.shape[0]):
        terms = []
        for t in range(student.shape[1] - 1):
            if labels[b, t + 1] == -100:
                continue
            p = torch.softmax(target[b, t].double(), -1)
            log_p = torch.log_softmax(target[b, t].double(), -1)
            log_q = torch.log_softmax(student[b, t].double(), -1)
            terms.append(sum(float(p[v] * (log_p[v] - log_q[v])) for v in range(p.numel())))
        if terms:
            per_sample.append(sum(terms) / len(terms))
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def _batch(batch=3, length=9, vocab=17, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator) * 3
    target = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, :4] = -100  # prompt
    labels[1, :2] = -100
    labels[1, -3:] = -100  # right padding
    labels[-1, :] = -100  # a sample with no answer token: excluded from the mean
    return student, target, labels


def test_equals_double_loop():
    student, target, labels = _batch()
    assert abs(token_kl(student, target, labels).item() - _double_loop(student, target, labels)) <= 1e-6


def test_chunking_does_not_change_the_value(monkeypatch):
    student, target, labels = _batch(batch=4, length=40, vocab=11, seed=3)
    full = token_kl(student, target, labels)
    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", 3 * 11)  # 3 rows per chunk
    assert abs(token_kl(student, target, labels).item() - full.item()) <= 1e-6


def test_gradcheck_float64():
    student, target, labels = _batch(batch=3, length=5, vocab=6, seed=1)
    student = student.double().requires_grad_(True)
    target = target.double()
    assert torch.autograd.gradcheck(lambda s: token_kl(s, target, labels).double(), (student,), eps=1e-6, atol=1e-5)


def test_gradient_flows_to_student_only():
    student, target, labels = _batch()
    student.requires_grad_(True)
    target.requires_grad_(True)
    token_kl(student, target, labels).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert target.grad is None
    # prompt / no-answer rows get exactly zero gradient
    assert torch.all(student.grad[2] == 0) and torch.all(student.grad[0, :3] == 0)


def test_bf16_inputs_match_float32():
    student, target, labels = _batch(batch=4, length=30, vocab=64, seed=2)
    student16, target16 = student.bfloat16(), target.bfloat16()
    expected = token_kl(student16.float(), target16.float(), labels)
    value = token_kl(student16, target16, labels)
    assert value.dtype == torch.float32
    assert abs(value.item() - expected.item()) <= 1e-3


def test_identical_logits_give_zero():
    student, _, labels = _batch()
    assert token_kl(student, student.clone(), labels).item() == 0.0


def test_no_answer_tokens_is_zero_not_nan():
    student, target, labels = _batch()
    labels[:] = -100
    student.requires_grad_(True)
    value = token_kl(student, target, labels)
    value.backward()
    assert value.item() == 0.0 and not math.isnan(value.item())
    assert torch.all(student.grad == 0)
