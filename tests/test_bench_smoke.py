"""Smoke test of bench/perf.py --quick, and proof that the ASU trainers use asu_plugin.core.loss.token_kl.

No timed assertions: the benchmark is the measure (`make bench-perf`). These tests only keep
the benchmark from rotting: it runs, writes perf.json / perf.md with the expected keys and
finite numbers. The trainer sections need OpenUnlearning at OU_DIR; without it --quick skips
them cleanly and the tests that need them skip with a reason. Besides: the bench's float64
reference against the definition in plain Python, the README's figures against perf.json, and
the analysis of a pair timed in fresh processes on hand-made samples.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from asu_plugin.openunlearning.environment import ou_dir

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "bench" / "perf.py"
if str(REPO / "bench") not in sys.path:  # the bench's package, perfbench, lives next to perf.py
    sys.path.insert(0, str(REPO / "bench"))
OU_SRC = ou_dir() / "src"
HAVE_OU = (OU_SRC / "trainer" / "__init__.py").is_file()
needs_ou = pytest.mark.skipif(not HAVE_OU, reason=f"OpenUnlearning not found at {OU_SRC.parent} (set OU_DIR)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    proc = subprocess.run(
        [sys.executable, str(PERF), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, f"bench/perf.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    document = json.loads((out / "perf.json").read_text())
    return out, document, (out / "perf.md").read_text()


def _numbers(value, path="$"):
    """Yield (path, number) for every int/float in a JSON document."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")


def _assert_finite(document, keys):
    for key in keys:
        bad = [path for path, number in _numbers(document[key], key) if not math.isfinite(number)]
        assert not bad, f"non-finite numbers: {bad[:10]}"


def test_quick_run_writes_reports(quick_run):
    out, document, markdown = quick_run
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind (writes must be atomic)"
    meta = document["meta"]
    assert meta["quick"] is True
    for key in ("cpu", "cpu_count", "python", "torch", "transformers", "torch_threads"):
        assert key in meta["machine"], key
    assert meta["machine"]["torch_threads"] >= 1
    assert set(meta["section_seconds"]) >= {"teacher", "loss"}

    teacher = document["teacher_overhead"]
    assert {(r["backend"], r["seq"]) for r in teacher["rows"]} == {
        (b, s) for b in ("sdpa", "eager") for s in meta["config"]["teacher"]["seqs"]
    }
    for row in teacher["rows"]:
        assert row["ratio"]["n"] == meta["config"]["teacher"]["reps"]
        assert row["plain_ms"]["median"] > 0 and row["smoothed_ms"]["median"] > 0

    loss = document["forget_loss_memory"]
    assert [r["seq"] for r in loss["rows"]] == meta["config"]["loss"]["seqs"]
    for row in loss["rows"]:
        assert row["function"].startswith("asu_plugin.")
        assert row["naive_alloc_peak_mb"]["median"] > 0 and row["ours_alloc_peak_mb"]["median"] > 0
        assert row["value_abs_diff"] <= 1e-6
        assert row["grad_max_rel_diff"] <= 1e-5
        # fp32 against the float64 reference: rounding only, and the reference is not the naive value
        assert row["value_abs_diff_fp64"] <= 1e-5 and row["value_naive_abs_diff_fp64"] <= 1e-5
        assert row["grad_max_rel_diff_fp64"] <= 1e-5
        assert row["value_fp64"] == pytest.approx(row["value_ours"], rel=1e-5)
    assert any(g["name"].startswith("forget-loss memory") for g in document["goals"])
    _assert_finite(document, ["teacher_overhead", "forget_loss_memory", "goals"])

    for heading in ("## Goals", "## Teacher overhead", "## Forget-loss memory", "Against the float64 reference"):
        assert heading in markdown
    assert meta["machine"]["torch"] in markdown


@pytest.mark.ou
@needs_ou
def test_quick_run_trainer_sections(quick_run):
    out, document, markdown = quick_run
    assert not document["meta"]["skipped"]
    step = document["train_step"]
    assert set(step["pairs"]) == {"gd", "kl", "gd_cache", "kl_lora", "kl_lora_npo"}
    expected_passes = {  # per step: student forward / backward, frozen forward
        "ASU_GD": (2, 2, 1), "NPO_NLL": (2, 2, 1), "ASU_KL": (2, 2, 2), "NPO_KL": (3, 2, 2),
        # the cache replaces the teacher pass; a LoRA student's adapters-off passes count as frozen
        "ASU_GD_CACHE": (2, 2, 0), "GradDiff": (2, 2, 0), "ASU_KL_LORA": (2, 2, 2), "NPO_KL_LORA": (3, 2, 2),
    }
    expected_token_kl = {"ASU_GD": 1, "ASU_KL": 2, "NPO_NLL": 0, "NPO_KL": 0, "ASU_GD_CACHE": 1, "GradDiff": 0,
                         "ASU_KL_LORA": 2, "NPO_KL_LORA": 0}
    cache = step["pairs"]["gd_cache"]["candidate_extra"]
    assert cache["teacher_cache_mb"]["median"] > 0 and cache["cache_build_peak_rss_mb"]["median"] > 0
    for pair in step["pairs"].values():
        cfg_step = document["meta"]["config"]["step"]
        assert pair["time_ratio"]["n"] == cfg_step["reps" if pair["timing"] == "interleaved" else "rss_reps"]
        assert pair["rss_ratio"] > 0
        for method, entry in pair["methods"].items():
            passes = entry["passes"]
            got = (passes.get("student_forward", 0), passes.get("student_backward", 0), passes.get("frozen_forward", 0))
            assert got == expected_passes[method], (method, passes)
            assert entry["token_kl_calls"] == expected_token_kl[method], method
            assert entry["token_kl_is_loss_token_kl"] is True
            assert entry["peak_rss_mb"]["median"] > 0
    design = document["design"]
    assert design["two_copies_peak_rss_mb"]["median"] > 0 and design["ratio_two_over_one"] > 0
    scaling = document["scaling"]
    assert set(scaling["series"]) == {"ASU_KL", "NPO_KL"}
    for series in scaling["series"].values():
        assert series["answers"] == document["meta"]["config"]["scaling"]["answers"]
        assert all(m is not None for m in series["peak_rss_mb"])
    assert (out / "perf_scaling.png").stat().st_size > 0
    _assert_finite(document, ["train_step", "design", "scaling"])
    for heading in ("## Train step", "## Design", "## Scaling"):
        assert heading in markdown


@pytest.mark.ou
@needs_ou
def test_asu_trainers_call_loss_token_kl(monkeypatch, tmp_path):
    """The forget loss the benchmark measures is the one the trainers run."""
    from perfbench import ou_trainers
    from perfbench.config import make_config

    ok, reason = ou_trainers.import_ou()
    assert ok, reason
    import asu_plugin.core.loss as loss_module
    import asu_plugin.openunlearning.trainers.asu as asu_module

    assert asu_module.token_kl is loss_module.token_kl
    function, description = ou_trainers.measured_token_kl()
    assert function is loss_module.token_kl and description.startswith(asu_module.__name__)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return loss_module.token_kl(*args, **kwargs)

    monkeypatch.setattr(asu_module, "token_kl", counted)
    cfg = make_config(quick=True, model="unused")
    for name, expected in (("ASU_GD", 1), ("ASU_KL", 2)):
        model = ou_trainers.load_model(cfg)
        dataset, collator, batch = ou_trainers.make_batch(ou_trainers.vocab_size(model), 2, 16, 8)
        trainer = ou_trainers.build_trainer(name, model, dataset, collator, 2, str(tmp_path / name))
        calls.clear()
        loss = trainer.compute_loss(trainer.model, batch)
        assert math.isfinite(float(loss.detach()))
        assert len(calls) == expected, (name, calls)


def _kl_definition(student, target, labels):
    """Mean over samples with answers of the mean per-answer-token KL(softmax(target) || softmax(student)),
    and its gradient (softmax(student) - softmax(target)) / (answers of the sample x samples), in
    plain Python floats (float64) from nested lists."""

    def log_softmax(row):
        top = max(row)
        norm = top + math.log(math.fsum(math.exp(x - top) for x in row))
        return [x - norm for x in row]

    per_sample, grad_terms = [], []
    for b, rows in enumerate(student):
        answer = [t for t in range(len(rows) - 1) if labels[b][t + 1] != -100]
        kls = []
        for t in answer:
            log_q, log_p = log_softmax(student[b][t]), log_softmax(target[b][t])
            kls.append(math.fsum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q)))
            grad_terms.append((b, t, len(answer), [math.exp(lq) - math.exp(lp) for lp, lq in zip(log_p, log_q)]))
        if answer:
            per_sample.append(math.fsum(kls) / len(answer))
    grad = [[[0.0] * len(student[0][0]) for _ in student[0]] for _ in student]
    for b, t, count, row in grad_terms:
        grad[b][t] = [g / (count * len(per_sample)) for g in row]
    return math.fsum(per_sample) / len(per_sample), grad


def test_float64_reference_is_the_definition_in_float64():
    """The bench's float64 reference agrees with the definition to float64 rounding (1e-13), far
    below the ~1e-7 an fp32 computation is off by: it is a real float64 reference."""
    import torch
    from perfbench.sections.loss import float64_reference

    rng = random.Random(3)
    batch, length, vocab = 3, 6, 11
    student = [[[rng.gauss(0, 3) for _ in range(vocab)] for _ in range(length)] for _ in range(batch)]
    target = [[[rng.gauss(0, 3) for _ in range(vocab)] for _ in range(length)] for _ in range(batch)]
    labels = [[-100, -100, 5, 6, 7, 8], [-100, -100, -100, -100, -100, -100], [-100, 4, 5, -100, 7, 8]]
    expected_value, expected_grad = _kl_definition(student, target, labels)

    value, grad = float64_reference(torch.tensor(student, dtype=torch.float64),
                                    torch.tensor(target, dtype=torch.float64), torch.tensor(labels))
    assert grad.dtype == torch.float64
    assert value == pytest.approx(expected_value, rel=1e-13, abs=1e-15)
    worst = max(abs(g - e) for gb, eb in zip(grad.tolist(), expected_grad) for gt, et in zip(gb, eb)
                for g, e in zip(gt, et))
    assert worst <= 1e-15, worst


def test_readme_figures_come_from_perf_json():
    """bench/README.md's figures block is exactly what the report writer makes of bench/results/perf.json."""
    from perfbench.readme import current_block, readme_block

    document = json.loads((REPO / "bench" / "results" / "perf.json").read_text())
    block = current_block((REPO / "bench" / "README.md").read_text())
    assert block == readme_block(document), "bench/README.md is stale: run `python bench/perf.py --report-only`"


def test_fresh_pair_is_planned_and_analysed():
    """A pair timed in fresh processes: the plan's points, given hand-made samples, give the
    per-process ratios (median of 4/2, 9/3, 5/4 = 2), the RSS ratio of medians and the goals."""
    from perfbench.comparisons import Pair
    from perfbench.config import make_config
    from perfbench.sections import step

    cfg = make_config(quick=False, model="unused")
    cfg["step"]["rss_reps"] = 3
    pair = Pair("cache", candidate="ASU_GD", baseline="NPO_NLL", timing="fresh")
    points = step.plan(cfg, pairs=(pair,))
    assert [p["name"] for p in points] == ["step_fresh:ASU_GD:r0", "step_fresh:NPO_NLL:r0", "step_fresh:NPO_NLL:r1",
                                           "step_fresh:ASU_GD:r1", "step_fresh:ASU_GD:r2", "step_fresh:NPO_NLL:r2"]
    assert all(p["warmup"] == cfg["step"]["warmup"] and p["count"] for p in points)
    assert step.rss_methods(cfg, pairs=(pair,)) == []
    samples = {"ASU_GD": ([4.0, 9.0, 5.0], [100.0, 110.0, 120.0]), "NPO_NLL": ([2.0, 3.0, 4.0], [200.0, 190.0, 180.0])}
    results = {}
    for p in points:
        rep = int(p["name"][-1])
        step_s, rss = samples[p["method"]]
        results[p["name"]] = {"step_s": step_s[rep], "peak_rss_mb": rss[rep], "vocab": 7,
                              "passes": {"student_forward": 2}, "token_kl_calls": {"n": 1, "is_loss_token_kl": True}}
    report = {"goals": []}
    step.analyse(cfg, results, report, pairs=(pair,))
    entry = report["train_step"]["pairs"]["cache"]
    assert entry["time_ratio"]["samples"] == [2.0, 3.0, 1.25] and entry["time_ratio"]["median"] == 2.0
    assert entry["rss_ratio"] == pytest.approx(110.0 / 190.0)
    assert [(g["name"], g["met"]) for g in report["goals"]] == [
        ("step time ASU_GD / NPO_NLL", False), ("step peak RSS ASU_GD / NPO_NLL", True)]
    assert "slower by 62.5% even at the IQR's low end" in report["goals"][0]["text"]


def test_rss_allowance_goal():
    """A pair whose RSS goal allows the candidate's own figure on top (the teacher cache): met when
    candidate <= limit x baseline + allowance, medians. Here 520 <= 1.02 x 400 + 120 = 528."""
    from perfbench.comparisons import Pair
    from perfbench.config import make_config
    from perfbench.sections import step

    cfg = make_config(quick=False, model="unused")
    cfg["step"]["rss_reps"] = 3
    pair = Pair("cache", candidate="ASU_GD_CACHE", baseline="GradDiff", timing="fresh", time_goal=None,
                rss_goal="cache_rss", rss_allowance="teacher_cache_mb")
    samples = {"ASU_GD_CACHE": [510.0, 520.0, 530.0], "GradDiff": [390.0, 400.0, 410.0]}
    results = {}
    for p in step.plan(cfg, pairs=(pair,)):
        rep = int(p["name"][-1])
        results[p["name"]] = {"step_s": 1.0, "peak_rss_mb": samples[p["method"]][rep], "vocab": 7,
                              "passes": {}, "token_kl_calls": {"n": 0, "is_loss_token_kl": True},
                              **({"teacher_cache_mb": 120.0} if p["method"] == "ASU_GD_CACHE" else {})}
    report = {"goals": []}
    step.analyse(cfg, results, report, pairs=(pair,))
    [record] = report["goals"]
    assert record["met"] is True and record["value"] == pytest.approx(520.0 / 528.0)
    assert "520 MB vs 1.02 x 400 + 120.0 = 528 MB" in record["text"]
    results = {k: {**v, "teacher_cache_mb": 100.0} if "teacher_cache_mb" in v else v for k, v in results.items()}
    report = {"goals": []}
    step.analyse(cfg, results, report, pairs=(pair,))
    assert report["goals"][0]["met"] is False and "over by" in report["goals"][0]["text"]  # 520 > 508


def test_partial_run_refuses_another_configuration(tmp_path):
    """--only into a perf.json of another configuration stops, before measuring, with the
    differing keys and the fix; the same configuration is accepted."""
    from perfbench.config import make_config
    from perfbench.run import previous_document

    quick = make_config(quick=True, model="unused")
    (tmp_path / "perf.json").write_text(json.dumps({"meta": {"config": quick}, "raw": {}}))
    with pytest.raises(SystemExit, match=r"differs in: .*quick.*Run every section \(omit --only\)"):
        previous_document(tmp_path, make_config(quick=False, model="unused"), ["loss"])
    assert previous_document(tmp_path, quick, ["loss"])["meta"]["config"] == quick
    assert previous_document(tmp_path, make_config(quick=False, model="unused"),
                             ["teacher", "step", "design", "loss", "scaling"]) is None  # a full run replaces


def test_partial_run_accepts_new_goal_limits(tmp_path):
    """The goals only judge measured figures: a perf.json made with other goal limits takes a
    partial run, and the merged document is judged by the new limits (its points are kept)."""
    from perfbench.config import make_config
    from perfbench.run import _merge, previous_document

    cfg = make_config(quick=True, model="unused")
    old = {**cfg, "goals": {k: v for k, v in cfg["goals"].items() if k != "lora_rss"}}
    (tmp_path / "perf.json").write_text(json.dumps(
        {"meta": {"config": old, "sections": ["loss"]}, "raw": {"loss:a": {"x": 1}, "step_time:gd": {"x": 2}}}))
    previous = previous_document(tmp_path, cfg, ["step"])
    every = ["teacher", "step", "design", "loss", "scaling"]
    assert previous_document(tmp_path, cfg, every) is None  # a full run replaces...
    assert previous_document(tmp_path, cfg, every, partial=True) == previous  # ...some points (--points) merge
    merged = _merge(previous, cfg, [{"name": "step_time:gd"}], {"step_time:gd": {"x": 3}}, {}, {"sections": ["step"]},
                    ["step"], "")
    assert merged["meta"]["config"] == cfg and merged["meta"]["sections"] == ["step", "loss"]
    assert merged["raw"] == {"loss:a": {"x": 1}, "step_time:gd": {"x": 3}}


def test_step_memory_comparison_reads_the_stages():
    """bench/step_memory.py's sentence (quoted by the perf report's missed RSS goals): resident set
    before the first step, the step's allocator peak and the process's peak, per method."""
    from tests.bench_scripts import load_bench

    step_memory = load_bench("step_memory")

    def method(name, before, peak, allocator):
        stages = {s: {"rss_mb": 500.0, "peak_since_previous_mb": 600.0} for s in step_memory.STAGES}
        stages["adam state"]["rss_mb"] = before
        stages["measured step"]["peak_since_previous_mb"] = peak
        return {"method": name, "stages": stages, "step_allocator_peak_mb": allocator,
                "held": {"trainable_mb": 1.0, "frozen_copy_mb": 0.0, "adam_state_mb": 2.0}}

    document = {"meta": {"date": "now", "shape": "4 x 256"},
                "methods": [method("ASU_KL_LORA", 600.0, 6000.0, 3000.0), method("ASU_KL", 3000.0, 6600.0, 3100.0)]}
    line = step_memory.comparison(document, "ASU_KL_LORA", "ASU_KL")
    assert line == ("ASU_KL_LORA vs ASU_KL: resident before the first step 600 vs 3000 MB (0.20x); the measured "
                    "step's own allocations peak at 3000 vs 3100 MB; the process's peak RSS 6000 vs 6600 MB (0.91x)")
    assert step_memory.comparison(document, "ASU_GD_CACHE", "GradDiff") is None
    assert f"- {line}" in step_memory.markdown(document)
