"""Train step through the OpenUnlearning trainers: the pairs of ``comparisons.STEP_PAIRS``.

Time (``timing="interleaved"``): ``Trainer.training_step`` + optimizer step of both methods in one
process, alternating, after a warm-up; ratios per repeat. Peak RSS: one step at steady state
(AdamW state allocated by ``prime_optimizer``) in a fresh process per method and repeat
(``step_rss`` points, shared with the design section). ``timing="fresh"`` pairs take both time
and RSS from fresh processes that time one step after the warm-up. Pass counts and ``token_kl``
calls are counted during one timed step.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..comparisons import STEP_PAIRS
from ..config import MB
from ..goals import at_most, goal
from ..memory import current_rss_bytes, peak_rss_bytes
from ..ou_trainers import (PassCounter, build_trainer, counting_token_kl, load_model, make_batch, prime_optimizer,
                           reads_index, train_step, vocab_size)
from ..stats import fmt, ratios, summary

NAME = "step"
NEEDS_OU = True


def _workdir() -> str:
    return tempfile.mkdtemp(prefix="trainer-", dir=os.environ.get("ASU_BENCH_TMP"))


def _counted_step(trainer, batch) -> tuple[float, float, dict, dict]:
    """One train step with pass and token_kl counting (hooks cost microseconds)."""
    counter = PassCounter()
    counter.attach_trainer(trainer)
    with counting_token_kl() as calls:
        seconds, loss = train_step(trainer, batch)
    counter.detach()
    return seconds, loss, counter.result(), calls


def point_step_time(cfg, spec):
    """Interleaved step times of the methods in spec["methods"] (one process, same batch)."""
    import torch

    scfg = cfg["step"]
    workdir = _workdir()
    trainers, batch = {}, None
    for name in spec["methods"]:
        model = load_model(cfg)
        dataset, collator, batch = make_batch(vocab_size(model), scfg["batch"], scfg["seq"], scfg["prompt"],
                                              keep_index=reads_index(name))
        trainers[name] = build_trainer(name, model, dataset, collator, scfg["batch"], workdir)
    for _ in range(scfg["warmup"]):  # includes the smoothing self-check probe (once per model)
        for trainer in trainers.values():
            train_step(trainer, batch)
    times, losses = {name: [] for name in trainers}, {name: [] for name in trainers}
    passes, token_kl_calls = {}, {}
    names = list(trainers)
    for rep in range(scfg["reps"]):
        for name in (names if rep % 2 == 0 else names[::-1]):
            if rep == 0:  # count passes and token_kl calls in the first timed step
                seconds, loss, passes[name], token_kl_calls[name] = _counted_step(trainers[name], batch)
            else:
                seconds, loss = train_step(trainers[name], batch)
            times[name].append(seconds)
            losses[name].append(loss)
    return {"times_s": times, "passes": passes, "token_kl_calls": token_kl_calls, "losses": losses,
            "vocab": vocab_size(model), "threads": torch.get_num_threads()}


def point_step_rss(cfg, spec):
    """Peak RSS of one optimizer step (steady state: AdamW state allocated) of one method, and
    the time of that step after ``spec["warmup"]`` warm-up steps (on ``warmup_seq`` tokens)."""
    import torch

    baseline = current_rss_bytes()
    model = load_model(cfg)
    vocab = vocab_size(model)
    index = reads_index(spec["method"])
    dataset, collator, batch = make_batch(vocab, spec["batch"], spec["seq"], spec["prompt"], keep_index=index)
    trainer = build_trainer(spec["method"], model, dataset, collator, spec["batch"], _workdir())
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    prime_optimizer(trainer)
    if spec.get("warmup"):  # process warm-up (threads, allocator, kernels)
        warm = make_batch(vocab, spec["batch"], spec.get("warmup_seq") or spec["seq"], spec["prompt"],
                          keep_index=index)[2]
        for _ in range(spec["warmup"]):
            train_step(trainer, warm)
    result = {}
    if spec.get("count"):
        seconds, loss, result["passes"], result["token_kl_calls"] = _counted_step(trainer, batch)
    else:
        seconds, loss = train_step(trainer, batch)
    extra = getattr(trainer, "bench_extra", {})  # what a bench trainer variant reports (bench_trainers)
    return {"peak_rss_mb": peak_rss_bytes() / MB, "baseline_rss_mb": baseline / MB, "step_s": seconds,
            "loss": loss, "model_mb": params_mb, "vocab": vocab, "threads": torch.get_num_threads(), **result,
            **extra}


POINTS = {"step_time": point_step_time, "step_rss": point_step_rss}


def _shape(cfg) -> dict:
    return {k: cfg["step"][k] for k in ("batch", "seq", "prompt")}


def plan(cfg, pairs=STEP_PAIRS) -> list[dict]:
    """Interleaved pairs: one step_time point each. Fresh pairs: step_fresh points, one per
    method and repeat, interleaved. (step_rss points come from ``rss_methods``, via the plan.)"""
    points = [{"name": f"step_time:{pair.key}", "kind": "step_time", "methods": list(pair.methods), "needs_ou": True}
              for pair in pairs if pair.timing == "interleaved"]
    fresh = list(dict.fromkeys(m for pair in pairs if pair.timing == "fresh" for m in pair.methods))
    for rep in range(cfg["step"]["rss_reps"]):
        for method in (fresh if rep % 2 == 0 else fresh[::-1]):
            points.append({"name": f"step_fresh:{method}:r{rep}", "kind": "step_rss", "method": method,
                           "needs_ou": True, "warmup": cfg["step"]["warmup"], "count": True, **_shape(cfg)})
    return points


def rss_methods(cfg, pairs=STEP_PAIRS) -> list[str]:
    """Methods whose peak RSS comes from the shared step_rss points (interleaved pairs)."""
    return list(dict.fromkeys(m for pair in pairs if pair.timing == "interleaved" for m in pair.methods))


def points_by_method(results, prefix: str) -> dict[str, dict[str, dict]]:
    """{method: {"r0": result, ...}} of the points named ``prefix:<method>:r<rep>``."""
    found: dict[str, dict[str, dict]] = {}
    for name, result in results.items():
        parts = name.split(":")
        if parts[0] == prefix and len(parts) == 3:
            found.setdefault(parts[1], {})[parts[2]] = result
    return found


def _method_entry(step_s, peaks, passes, token_kl_calls) -> dict:
    return {"step_s": summary(step_s), "peak_rss_mb": summary(peaks) if peaks else None, "passes": passes,
            "token_kl_calls": token_kl_calls["n"], "token_kl_is_loss_token_kl": token_kl_calls["is_loss_token_kl"]}


def _pair_entry(pair, results, rss, fresh) -> dict | None:
    """Time ratio, RSS ratio and per-method figures of one pair, or None if it was not measured."""
    a, b = pair.methods
    if pair.timing == "interleaved":
        timed = results.get(f"step_time:{pair.key}")
        if timed is None:
            return None
        times = {m: timed["times_s"][m] for m in pair.methods}
        methods = {m: _method_entry(times[m], [r["peak_rss_mb"] for r in rss.get(m, {}).values()],
                                    timed["passes"][m], timed["token_kl_calls"][m]) for m in pair.methods}
    else:
        reps = sorted(set(fresh.get(a, {})) & set(fresh.get(b, {})), key=lambda r: int(r[1:]))
        if not reps:
            return None
        times = {m: [fresh[m][r]["step_s"] for r in reps] for m in pair.methods}
        methods = {m: _method_entry(times[m], [fresh[m][r]["peak_rss_mb"] for r in reps],
                                    fresh[m][reps[0]]["passes"], fresh[m][reps[0]]["token_kl_calls"])
                   for m in pair.methods}
    a_rss, b_rss = methods[a]["peak_rss_mb"], methods[b]["peak_rss_mb"]
    entry = {"candidate": a, "baseline": b, "timing": pair.timing, "methods": methods, "note": pair.note,
             "time_ratio": ratios(times[a], times[b]),
             "rss_ratio": a_rss["median"] / b_rss["median"] if a_rss and b_rss else None}
    if pair.timing == "fresh":  # figures a bench trainer variant reported (e.g. its teacher cache)
        numeric = {k for k, v in fresh[a][reps[0]].items() if k in _EXTRA_FIGURES and v is not None}
        entry["candidate_extra"] = {k: summary([fresh[a][r][k] for r in reps]) for k in sorted(numeric)}
    return entry


#: figures of ``bench_trainers`` variants that the pair entries summarise
_EXTRA_FIGURES = ("teacher_cache_mb", "cache_build_peak_rss_mb")


def _pair_goals(pair, entry, goals) -> list[dict]:
    a, b = pair.methods
    found = []
    tr = entry["time_ratio"]
    if pair.time_goal:
        limit = goals[pair.time_goal]
        found.append(goal(NAME, f"step time {a} / {b}", f"<= {limit:.2f}x within IQR", tr["median"],
                          tr["q1"] <= limit, f"{tr['median']:.3f}x (IQR {tr['q1']:.3f}-{tr['q3']:.3f})",
                          f"slower by {(tr['q1'] / limit - 1) * 100:.1f}% even at the IQR's low end"))
    if pair.rss_goal and entry["rss_ratio"] is not None:
        limit = goals[pair.rss_goal]
        peaks = [entry["methods"][m]["peak_rss_mb"]["median"] for m in (a, b)]
        if pair.rss_allowance:  # candidate <= limit x baseline + its own allowance (e.g. the cache)
            extra = entry.get("candidate_extra", {}).get(pair.rss_allowance)
            allowance = extra["median"] if extra else 0.0
            bound = limit * peaks[1] + allowance
            found.append(at_most(NAME, f"step peak RSS {a} vs {b}", peaks[0] / bound, 1.0,
                                 f"<= {limit:.2f}x + {pair.rss_allowance}",
                                 f"{peaks[0]:.0f} MB vs {limit:.2f} x {peaks[1]:.0f} + {allowance:.1f} = {bound:.0f} MB "
                                 f"({entry['rss_ratio']:.3f}x {b}'s)"))
        else:
            found.append(at_most(NAME, f"step peak RSS {a} / {b}", entry["rss_ratio"], limit, f"<= {limit:.2f}x",
                                 f"{entry['rss_ratio']:.3f}x ({peaks[0]:.0f} vs {peaks[1]:.0f} MB)"))
    return found


def analyse(cfg, results, report, pairs=STEP_PAIRS) -> None:
    rss, fresh = points_by_method(results, "step_rss"), points_by_method(results, "step_fresh")
    entries = {}
    for pair in pairs:
        entry = _pair_entry(pair, results, rss, fresh)
        if entry is not None:
            entries[pair.key] = entry
            report["goals"] += _pair_goals(pair, entry, cfg["goals"])
    if entries:
        vocab = next(r["vocab"] for k, r in results.items() if k.split(":")[0] in ("step_time", "step_fresh"))
        report["train_step"] = {"shape": {**_shape(cfg), "vocab": vocab}, "pairs": entries}


def render(report) -> list[str]:
    s = report.get("train_step")
    if not s:
        return []
    shape = s["shape"]
    lines = ["", f"## Train step (OU trainers; forget + retain {shape['batch']} x {shape['seq']} tokens, "
             f"{shape['prompt']} prompt)", "",
             "Time: `Trainer.training_step` + optimizer step, interleaved in one process (pairs timed in fresh "
             "processes say so). Peak RSS: one step at steady state (AdamW state allocated) in a fresh process. "
             "Passes: forward hooks on the student and frozen models during one step; a backward is a student "
             "forward whose logits get a gradient.", "",
             "| method | step s (median) | IQR | time ratio (IQR) | peak RSS MB | RSS ratio | student fwd / bwd "
             "| frozen fwd | token_kl calls |", "|---|---|---|---|---|---|---|---|---|"]
    for entry in s["pairs"].values():
        for method in (entry["candidate"], entry["baseline"]):
            e = entry["methods"][method]
            p = e["passes"]
            is_candidate = method == entry["candidate"]
            tr = entry["time_ratio"]
            label = method + (" (fresh processes)" if entry.get("timing") == "fresh" and is_candidate else "")
            lines.append(
                f"| {label} | {e['step_s']['median']:.3f} | {e['step_s']['q1']:.3f}-{e['step_s']['q3']:.3f} | "
                + (f"{tr['median']:.3f} ({tr['q1']:.3f}-{tr['q3']:.3f})" if is_candidate else "1") + " | "
                + (f"{e['peak_rss_mb']['median']:.0f}" if e["peak_rss_mb"] else "n/a") + " | "
                + (fmt(entry["rss_ratio"]) if is_candidate else "1") + " | "
                f"{p.get('student_forward', 0)} / {p.get('student_backward', 0)} | {p.get('frozen_forward', 0)} | "
                f"{e['token_kl_calls']} |")
    notes = [entry for entry in s["pairs"].values() if entry.get("note") or entry.get("candidate_extra")]
    if notes:
        lines += ["", "Pairs timed in fresh processes:", ""]
    for entry in notes:
        extra = entry.get("candidate_extra", {})
        figures = "".join(f"; {key} {value['median']:.1f} (median of {value['n']})" for key, value in extra.items())
        lines.append(f"- {entry['candidate']} vs {entry['baseline']}: {entry.get('note', '')}{figures}")
    return lines


PROFILE = Path(__file__).resolve().parents[2] / "results" / "step_memory.json"  # bench/step_memory.py's


def _profile(a: str, b: str) -> str:
    """The memory profile's sentence on ``a`` vs ``b`` (bench/step_memory.py), when it was run."""
    if not PROFILE.is_file():
        return " Profile them with `python bench/step_memory.py`."
    from step_memory import comparison  # bench/ is on sys.path, as for every perfbench module

    line = comparison(json.loads(PROFILE.read_text()), a, b)
    return f" Profile (bench/results/step_memory.md): {line}." if line else ""


def why(goal_record, report) -> str:
    name, text = goal_record["name"], goal_record["text"]
    if "ASU_GD_CACHE" in name:
        return (f"**{name}**: {text}. ASU_GD_CACHE runs no teacher pass per step but reads the cached rows "
                "(CPU) into a (B, T, V) tensor; GradDiff's forget term is one NLL. A gap in time comes from that "
                "copy and token_kl; in memory from the cache itself and the (B, T, V) target tensor."
                + _profile("ASU_GD_CACHE", "GradDiff"))
    if "ASU_KL_LORA" in name:
        return (f"**{name}**: {text}. With LoRA the weights' gradients, Adam state and the frozen copy go; "
                "the activations and the (B, T, V) logits of the student, teacher and reference passes stay."
                + _profile("ASU_KL_LORA", "ASU_KL"))
    if name.startswith("step time"):
        return (f"**{name}**: {text}. See the pass counts: the pair runs the same number of student "
                "and frozen passes, so a gap comes from the loss (token_kl's chunked rows vs NPO's "
                "cross-entropy) or the smoothing mode's per-call overhead in the teacher pass.")
    shape = report["train_step"]["shape"]
    logits_mb = shape["batch"] * shape["seq"] * shape["vocab"] * 4 / MB
    return (f"**{name}**: {text}. One (B, T, V) fp32 logits tensor at this batch is "
            f"{logits_mb:.0f} MB; ASU keeps the teacher's logits alive while the student's forget logits "
            "and their gradient exist, where NPO keeps per-sequence NLLs of the frozen pass.")
