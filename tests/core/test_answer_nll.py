"""answer_nll (the ASU_GD / ASU_IDK NLL terms) and drop_first_answer_token (ASU_IDK)."""

from __future__ import annotations

import math

import torch
import transformers

from asu_plugin.core.loss import answer_nll, drop_first_answer_token


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config).eval()


def test_equals_the_models_own_loss():
    model = _tiny_llama()
    ids = torch.randint(3, 40, (3, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, -2:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(answer_nll(out.logits, labels), out.loss, rtol=0, atol=1e-6)


def test_by_hand_on_two_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(token 2) = 3 / 6 = 0.5 at position 0
    labels = torch.tensor([[-100, 2, 1]])  # label at 1 read from position 0, at 2 from position 1
    expected = (-math.log(0.5) - math.log(0.25)) / 2  # position 1 is uniform: 1/4
    assert abs(answer_nll(logits, labels).item() - expected) < 1e-6


def test_no_answer_tokens_is_zero_with_a_gradient_not_nan():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), -100)
    loss = answer_nll(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))  # finite, and it moves nothing
    model_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert math.isnan(model_loss.item())  # what a model's own .loss would have given


def test_drop_first_answer_token():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 3, 4, -100, -100], [-100, -100, -100, -100, -100]])
    dropped = drop_first_answer_token(labels)
    assert dropped.tolist() == [[-100, -100, -100, 6, 7], [-100, -100, 4, -100, -100], [-100] * 5]
    assert labels[0, 2] == 5  # a copy
