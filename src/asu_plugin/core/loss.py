"""``token_kl``: KL(target || student) on answer tokens, lean in memory.

Why not ``log_softmax`` over the whole (B, T, V) tensor: in unlearning batches half or
more of the positions are prompt or padding, and the naive form materialises several
fp32 (B, T, V) tensors (two log-softmaxes, their difference, the product, and the saved
activations for backward). Here the answer positions are gathered first and the KL is
computed in chunks of rows inside a custom autograd function that saves nothing but the
inputs and recomputes the (cheap) softmaxes in backward. Peak extra memory is a few
(chunk, V) fp32 buffers, independent of sequence length.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 21  # ~8 MB of fp32 per temporary: about 42 rows of a 49k vocabulary


def _chunk_rows(vocab: int) -> int:
    """Rows per chunk so that each fp32 (rows, V) temporary stays near _CHUNK_ELEMENTS."""
    return max(1, _CHUNK_ELEMENTS // vocab)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """At least float32 (bf16/fp16 logits are upcast); float64 stays float64 (gradcheck)."""
    return torch.promote_types(logits.dtype, torch.float32)


def _row_kl(student_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(student)) per row, in at least float32."""
    dtype = _compute_dtype(student_rows)
    log_student = torch.log_softmax(student_rows.to(dtype), dim=-1)
    log_target = torch.log_softmax(target_rows.to(dtype), dim=-1)
    target = log_target.exp()
    # where the target probability is exactly 0 the term is 0 (not 0 * -inf = nan)
    terms = torch.where(target > 0, target * (log_target - log_student), torch.zeros_like(target))
    return terms.sum(-1)


class _AnswerTokenKL(torch.autograd.Function):
    """Per-row KL over selected flat positions; gradient only for the student logits."""

    @staticmethod
    def forward(ctx, student_flat, target_flat, positions):
        out = torch.empty(positions.numel(), dtype=_compute_dtype(student_flat), device=student_flat.device)
        step = _chunk_rows(student_flat.shape[-1])
        for start in range(0, positions.numel(), step):
            rows = positions[start : start + step]
            out[start : start + rows.numel()] = _row_kl(student_flat[rows], target_flat[rows])
        ctx.save_for_backward(student_flat, target_flat, positions)
        return out

    @staticmethod
    def backward(ctx, grad_rows):
        student_flat, target_flat, positions = ctx.saved_tensors
        grad = torch.zeros_like(student_flat)
        step = _chunk_rows(student_flat.shape[-1])
        for start in range(0, positions.numel(), step):
            rows = positions[start : start + step]
            dtype = _compute_dtype(student_flat)
            p_student = torch.softmax(student_flat[rows].to(dtype), dim=-1)
            p_target = torch.softmax(target_flat[rows].to(dtype), dim=-1)
            # d KL(t || s) / d student_logits = softmax(s) - softmax(t)
            chunk = (p_student - p_target) * grad_rows[start : start + rows.numel(), None]
            grad[rows] = chunk.to(grad.dtype)
        return grad, None, None


def token_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(target || student) over answer tokens, averaged per sample.

    Args:
        student_logits: (B, T, V) logits of the model being trained.
        target_logits: (B, T, V) logits of the target (smoothed teacher or plain reference);
            treated as a constant (no gradient).
        labels: (B, T) token labels, -100 on prompt and padding (Hugging Face convention:
            logits at position t predict labels at t + 1).

    Returns a float32 scalar (float64 for float64 inputs): KL summed over the vocabulary, averaged over each sample's
    answer tokens, then over the samples that have any; exactly 0 when none has.
    """
    if student_logits.shape != target_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and target logits "
            f"{tuple(target_logits.shape)} differ: run both models on the same batch"
        )
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape[:2])}")
    batch, length, vocab = student_logits.shape
    answer = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): position t predicts label t+1
    sample, position = answer.nonzero(as_tuple=True)
    if sample.numel() == 0:
        return (student_logits.sum() * 0.0).to(_compute_dtype(student_logits))  # keeps the graph, no NaN
    flat = (sample * length + position).contiguous()
    student_flat = student_logits.reshape(batch * length, vocab)
    target_flat = target_logits.detach().reshape(batch * length, vocab)
    row_kl = _AnswerTokenKL.apply(student_flat, target_flat, flat)
    counts = answer.sum(dim=1)
    per_sample = torch.zeros(batch, dtype=row_kl.dtype, device=row_kl.device).index_add(0, sample, row_kl)
    has_answer = counts > 0
    return (per_sample[has_answer] / counts[has_answer]).mean()


def answer_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL over the batch's answer tokens, their count): the parts of a token mean, so a
    caller can divide by a count taken over more than this batch (all processes' tokens)."""
    shifted = labels[:, 1:].reshape(-1)
    rows = logits[:, :-1].reshape(-1, logits.shape[-1])
    total = torch.nn.functional.cross_entropy(rows.float(), shifted, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shifted != IGNORE_INDEX).sum()


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch, as a Hugging Face model's ``.loss``, but
    0 (with a graph, not NaN) for a batch without answer tokens (e.g. prompts cut by max_length)."""
    total, count = answer_nll_sum(logits, labels)
    return total / count.clamp(min=1)


def drop_first_answer_token(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with each row's first answer token set to -100 (a copy).

    ASU+IDK: the IDK answer already dictates the first answer token ("I ..."), so the KL to
    the smoothed teacher, which would pull it towards the original answer's opening, skips it.
    """
    labels = labels.clone()
    answer = labels != IGNORE_INDEX
    rows = answer.any(dim=1).nonzero(as_tuple=True)[0]
    labels[rows, answer[rows].float().argmax(dim=1)] = IGNORE_INDEX
    return labels
