"""Forget-loss memory and accuracy: ``token_kl`` as the trainers call it vs the naive form.

Memory (``loss_mem`` points): peak extra memory of forward + backward, input logits excluded, by
torch's allocator (``memory.allocator_peak_bytes``) with the RSS high-water delta as a cross-check;
one fresh process per (implementation, T). Accuracy (``loss_check`` points): value and gradient of
ours vs the naive fp32 form, and both vs a float64 reference computed from the definition here
(``float64_reference``: no code shared with asu_plugin.core.loss).
"""

from __future__ import annotations

import math

from ..config import IGNORE_INDEX, MB
from ..goals import at_most, goal
from ..memory import allocator_peak_bytes, current_rss_bytes, peak_rss_bytes, reset_peak_rss
from ..ou_trainers import measured_token_kl
from ..stats import fmt, median, median_or_none, summary

NAME = "loss"
NEEDS_OU = False
REFERENCE_ROWS = 64  # answer positions per float64 chunk: 64 x V x 8 bytes per temporary


def naive_token_kl(student_logits, target_logits, labels):
    """The naive form whose memory ours is compared with: log_softmax of the full (B, T, V) fp32
    student and target logits, elementwise KL, then the answer mask (same reduction as token_kl)."""
    import torch.nn.functional as F

    log_student = F.log_softmax(student_logits.float(), dim=-1)
    log_target = F.log_softmax(target_logits.detach().float(), dim=-1)
    kl = F.kl_div(log_student, log_target, reduction="none", log_target=True).sum(-1)  # (B, T)
    answer = labels[:, 1:] != IGNORE_INDEX  # position t predicts label t + 1
    per_position = kl[:, :-1] * answer
    counts = answer.sum(dim=1)
    has_answer = counts > 0
    return (per_position.sum(dim=1)[has_answer] / counts[has_answer]).mean()


def float64_reference_chunks(student_logits, target_logits, labels, rows: int = REFERENCE_ROWS):
    """The loss and its gradient in float64 from the definition, chunk by chunk of answer positions.

    Loss = mean over the samples that have answer tokens of (mean over the sample's answer
    positions t, i.e. labels[t + 1] != -100, of KL(p_t || q_t)), p = softmax(target), q =
    softmax(student), every operation in float64 (log-softmax as x - logsumexp(x)). Each chunk's
    gradient w.r.t. its student logits comes from autograd on that chunk's weighted KL sum.
    Yields (sample index, position index, weighted KL sum of the chunk, gradient rows (n, V)).
    """
    import torch

    answer = labels[:, 1:] != IGNORE_INDEX
    counts = answer.sum(dim=1).to(torch.float64)
    samples = int((counts > 0).sum())
    positions = answer.nonzero()
    for chunk in positions.split(rows):
        b, t = chunk[:, 0], chunk[:, 1]
        student = student_logits.detach()[b, t].to(torch.float64).requires_grad_(True)
        target = target_logits.detach()[b, t].to(torch.float64)
        log_q = student - torch.logsumexp(student, dim=-1, keepdim=True)
        log_p = target - torch.logsumexp(target, dim=-1, keepdim=True)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
        part = (kl / (counts[b] * samples)).sum()
        (grad,) = torch.autograd.grad(part, student)
        yield b, t, float(part.detach()), grad


def float64_reference(student_logits, target_logits, labels):
    """(value, gradient (B, T, V) float64) of the float64 reference; zero gradient off the answer."""
    import torch

    grad = torch.zeros(student_logits.shape, dtype=torch.float64)
    parts = []
    for b, t, part, rows in float64_reference_chunks(student_logits, target_logits, labels):
        parts.append(part)
        grad[b, t] = rows
    return math.fsum(parts), grad


def loss_inputs(cfg, seq):
    import torch

    lcfg = cfg["loss"]
    generator = torch.Generator().manual_seed(seq)
    shape = (lcfg["batch"], seq, lcfg["vocab"])
    student = (torch.randn(shape, generator=generator) * 2).requires_grad_(True)
    target = torch.randn(shape, generator=generator) * 2
    labels = torch.randint(3, lcfg["vocab"], shape[:2], generator=generator)
    labels[:, : seq // 2] = IGNORE_INDEX  # half the tokens are prompt
    return student, target, labels


def point_loss_mem(cfg, spec):
    """Extra memory of forward + backward of one forget-loss implementation at one T."""
    import torch

    fn, name = measured_token_kl() if spec["impl"] == "ours" else (naive_token_kl, "naive_token_kl (bench)")
    student, target, labels = loss_inputs(cfg, spec["seq"])

    def once():
        loss = fn(student, target, labels)
        loss.backward()

    once()  # warm-up
    student.grad = None
    alloc, rss = [], []
    for _ in range(cfg["loss"]["reps"]):
        alloc.append(allocator_peak_bytes(once) / MB)
        student.grad = None
        reset = reset_peak_rss()
        before = current_rss_bytes()
        once()
        rss.append((peak_rss_bytes() - before) / MB if reset else None)  # no reset: no per-run peak
        student.grad = None
    element = student.element_size()
    return {"function": name, "alloc_peak_mb": alloc, "rss_peak_mb": rss,
            "grad_mb": student.numel() * element / MB, "inputs_mb": 2 * student.numel() * element / MB,
            "threads": torch.get_num_threads()}


def point_loss_check(cfg, spec):
    """ours vs naive (fp32) vs the float64 reference: value and gradient at one T."""
    import torch

    fn, name = measured_token_kl()
    student, target, labels = loss_inputs(cfg, spec["seq"])
    ours = fn(student, target, labels)
    ours.backward()
    grad_ours, student.grad = student.grad, None
    naive = naive_token_kl(student, target, labels)
    naive.backward()
    grad_naive, student.grad = student.grad, None
    grad_scale = float(grad_naive.abs().max())
    naive_diff = float((grad_ours - grad_naive).abs().max())
    del grad_naive
    # float64: chunk by chunk of answer positions; off the answer the reference gradient is 0
    parts, diff64, scale64 = [], 0.0, 0.0
    off_answer = labels[:, 1:] == IGNORE_INDEX  # (B, T - 1); the last position predicts nothing
    off_answer = torch.cat([off_answer, off_answer.new_ones(labels.shape[0], 1)], dim=1)
    for b, t, part, rows in float64_reference_chunks(student, target, labels):
        parts.append(part)
        diff64 = max(diff64, float((grad_ours[b, t].double() - rows).abs().max()))
        scale64 = max(scale64, float(rows.abs().max()))
    off = float(grad_ours[off_answer].abs().max()) if off_answer.any() else 0.0
    diff64 = max(diff64, off)
    exact = math.fsum(parts)
    return {
        "function": name, "reference": "float64 from the definition (bench, float64_reference)",
        "value_ours": float(ours), "value_naive": float(naive), "value_fp64": exact,
        "value_abs_diff": abs(float(ours) - float(naive)),
        "value_abs_diff_fp64": abs(float(ours) - exact),
        "value_naive_abs_diff_fp64": abs(float(naive) - exact),
        "grad_max_abs_diff": naive_diff,
        "grad_max_rel_diff": naive_diff / grad_scale if grad_scale else 0.0,
        "grad_max_abs_diff_fp64": diff64,
        "grad_max_rel_diff_fp64": diff64 / scale64 if scale64 else 0.0,
    }


POINTS = {"loss_mem": point_loss_mem, "loss_check": point_loss_check}


def plan(cfg) -> list[dict]:
    seqs = cfg["loss"]["seqs"]
    return ([{"name": f"loss_check:T{seq}", "kind": "loss_check", "seq": seq} for seq in seqs]
            + [{"name": f"loss_mem:{impl}:T{seq}", "kind": "loss_mem", "impl": impl, "seq": seq}
               for seq in seqs for impl in ("naive", "ours")])


CHECK_KEYS = ("value_ours", "value_naive", "value_abs_diff", "grad_max_abs_diff", "grad_max_rel_diff")
FP64_KEYS = ("value_fp64", "value_abs_diff_fp64", "value_naive_abs_diff_fp64", "grad_max_abs_diff_fp64",
             "grad_max_rel_diff_fp64")


def _check_figures(check: dict) -> dict:
    """The accuracy figures of a loss_check point. Points measured before the float64 reference
    existed (no "reference" key) had an fp32 stand-in under the fp64 names: not reported."""
    real_fp64 = "reference" in check
    return {**{k: check.get(k) for k in CHECK_KEYS}, **{k: check.get(k) if real_fp64 else None for k in FP64_KEYS}}


def analyse(cfg, results, report) -> None:
    if not any(k.startswith("loss_mem:") for k in results):
        return
    goals = cfg["goals"]
    rows = []
    for seq in cfg["loss"]["seqs"]:
        ours, naive = results.get(f"loss_mem:ours:T{seq}"), results.get(f"loss_mem:naive:T{seq}")
        check = results.get(f"loss_check:T{seq}", {})
        if not ours or not naive:
            continue
        o, n = median(ours["alloc_peak_mb"]), median(naive["alloc_peak_mb"])
        o_rss, n_rss = median_or_none(ours["rss_peak_mb"]), median_or_none(naive["rss_peak_mb"])
        grad = ours["grad_mb"]
        row = {
            "seq": seq, "batch": cfg["loss"]["batch"], "vocab": cfg["loss"]["vocab"], "function": ours["function"],
            "ours_alloc_peak_mb": summary(ours["alloc_peak_mb"]),
            "naive_alloc_peak_mb": summary(naive["alloc_peak_mb"]),
            "ratio": o / n if n else float("nan"),
            "ours_rss_peak_mb": o_rss, "naive_rss_peak_mb": n_rss,
            "ratio_rss": o_rss / n_rss if o_rss is not None and n_rss else None,
            "grad_mb": grad, "inputs_mb": ours["inputs_mb"],
            "ratio_excluding_grad": (o - grad) / (n - grad) if n > grad else float("nan"),
            **_check_figures(check),
        }
        rows.append(row)
        report["goals"].append(at_most(
            NAME, f"forget-loss memory T={seq}", row["ratio"], goals["loss_mem"], f"<= {goals['loss_mem']}x naive",
            f"{row['ratio']:.3f}x ({o:.0f} vs {n:.0f} MB; without the {grad:.0f} MB logits gradient both "
            f"need: {row['ratio_excluding_grad']:.3f}x)", digits=0))
        if check:
            fp64 = (f"; vs float64: value {row['value_abs_diff_fp64']:.2e}, grad {row['grad_max_abs_diff_fp64']:.2e}"
                    if row["value_abs_diff_fp64"] is not None else "")
            report["goals"].append(goal(
                NAME, f"forget-loss value/grad T={seq}", f"|ours - naive| <= {goals['loss_value']:g}",
                check["value_abs_diff"], check["value_abs_diff"] <= goals["loss_value"],
                f"value diff {check['value_abs_diff']:.2e}, grad max diff {check['grad_max_abs_diff']:.2e} "
                f"(relative {check['grad_max_rel_diff']:.2e}){fp64}"))
    report["forget_loss_memory"] = {"rows": rows, "method": "torch CPU allocator peak (torch.profiler "
                                    "profile_memory), RSS high-water delta as cross-check; fresh process per point"}


def _sci(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def render(report) -> list[str]:
    f = report.get("forget_loss_memory")
    if not f:
        return []
    lines = ["", "## Forget-loss memory (forward + backward, half the tokens prompt, input logits excluded)", "",
             f"Measured: {f['method']}. Function: {f['rows'][0]['function'] if f['rows'] else 'n/a'}.", "",
             "| B x T x V | naive MB | ours MB | ratio | ratio (RSS) | ratio without the logits grad "
             "| value diff | grad max diff (rel) |", "|---|---|---|---|---|---|---|---|"]
    for r in f["rows"]:
        lines.append(
            f"| {r['batch']} x {r['seq']} x {r['vocab']} | {r['naive_alloc_peak_mb']['median']:.0f} | "
            f"{r['ours_alloc_peak_mb']['median']:.0f} | {r['ratio']:.3f} | {fmt(r['ratio_rss'])} | "
            f"{fmt(r['ratio_excluding_grad'])} | {fmt(r['value_abs_diff'] or 0.0, 8)} | "
            f"{(r['grad_max_abs_diff'] or 0.0):.1e} ({(r['grad_max_rel_diff'] or 0.0):.1e}) |")
    lines += ["", "Against the float64 reference (the loss and its gradient from the definition, every operation "
              "in float64, computed by the bench without asu_plugin.core.loss):", "",
              "| B x T x V | float64 value | ours - float64 | naive fp32 - float64 | grad max diff ours vs float64 "
              "(rel) |", "|---|---|---|---|---|"]
    for r in f["rows"]:
        lines.append(f"| {r['batch']} x {r['seq']} x {r['vocab']} | {fmt(r['value_fp64'], 9)} | "
                     f"{_sci(r['value_abs_diff_fp64'])} | {_sci(r['value_naive_abs_diff_fp64'])} | "
                     f"{_sci(r['grad_max_abs_diff_fp64'])} ({_sci(r['grad_max_rel_diff_fp64'])}) |")
    return lines


def why(goal_record, report) -> str:
    if goal_record["name"].startswith("forget-loss memory"):
        return (f"**{goal_record['name']}**: {goal_record['text']}. Both forms must produce the (B, T, V) gradient "
                "of the logits; the rest of ours is the per-chunk work of asu_plugin.core.loss (_CHUNK_ELEMENTS / V "
                "rows x V, several fp32 temporaries in _row_kl and in backward), which does not shrink with T: a "
                "smaller chunk or in-place temporaries would lower it (cause: ours, asu_plugin/core/loss.py).")
    return (f"**{goal_record['name']}**: {goal_record['text']}: fp32 summation order; compare both with the "
            "float64 reference (second table).")
