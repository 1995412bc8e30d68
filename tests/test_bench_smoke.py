"""Smoke test of bench/perf.py --quick, and proof that the ASU trainers use asu_plugin.core.loss.token_kl.

No timed assertions: the benchmark is the measure (`make bench-perf`). These tests only keep
the benchmark from rotting: it runs, writes perf.json / perf.md with the expected keys and
finite numbers. The trainer sections need OpenUnlearning at OU_DIR; without it --quick skips
them cleanly and the tests that need them skip with a reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "bench" / "perf.py"
OU_SRC = Path(os.environ.get("OU_DIR") or "~/.cache/asu-plugin/open-unlearning").expanduser() / "src"
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
    assert any(g["name"].startswith("forget-loss memory") for g in document["goals"])
    _assert_finite(document, ["teacher_overhead", "forget_loss_memory", "goals"])

    for heading in ("## Goals", "## Teacher overhead", "## Forget-loss memory"):
        assert heading in markdown
    assert meta["machine"]["torch"] in markdown


@pytest.mark.ou
@needs_ou
def test_quick_run_trainer_sections(quick_run):
    out, document, markdown = quick_run
    assert not document["meta"]["skipped"]
    step = document["train_step"]
    assert set(step["pairs"]) == {"gd", "kl"}
    expected_passes = {  # per step: student forward / backward, frozen forward
        "ASU_GD": (2, 2, 1), "NPO_NLL": (2, 2, 1), "ASU_KL": (2, 2, 2), "NPO_KL": (3, 2, 2),
    }
    expected_token_kl = {"ASU_GD": 1, "ASU_KL": 2, "NPO_NLL": 0, "NPO_KL": 0}
    for pair in step["pairs"].values():
        assert pair["time_ratio"]["n"] == document["meta"]["config"]["step"]["reps"]
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
    perf = load_bench("perf")
    ok, reason = perf.import_ou()
    assert ok, reason
    import asu_plugin.core.loss as loss_module
    import asu_plugin.openunlearning.trainers as trainers_module

    assert trainers_module.token_kl is loss_module.token_kl
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return loss_module.token_kl(*args, **kwargs)

    monkeypatch.setattr(trainers_module, "token_kl", counted)
    cfg = perf.make_config(perf.parse_args(["--quick"]))
    for name, expected in (("ASU_GD", 1), ("ASU_KL", 2)):
        model = perf.load_model(cfg)
        dataset, collator, batch = perf.make_batch(perf.vocab_size(model), 2, 16, 8)
        trainer = perf.build_trainer(name, model, dataset, collator, 2, str(tmp_path / name))
        calls.clear()
        loss = trainer.compute_loss(trainer.model, batch)
        assert math.isfinite(float(loss.detach()))
        assert len(calls) == expected, (name, calls)
