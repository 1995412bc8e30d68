"""bench/gpu_check.py without a GPU: its plan fits the machine-time cap, and (once `make gpu-wheels`
prepared .gpu-carry/) its dry run passes: the carried wheels install together for python 3.12 and,
with only them and the lent machine's own packages importable, OU's train chain and the plugin
import and both OU runs of the plan compose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import BENCH_DIR, load_bench

CARRY = BENCH_DIR.parent / ".gpu-carry"


@pytest.fixture(scope="module")
def gpu_check():
    return load_bench("gpu_check")


def test_plan_fits_the_cap_and_runs_ou_as_shipped(gpu_check, tmp_path):
    stages = gpu_check.plan(tmp_path, CARRY)
    assert [s.name for s in stages] == ["setup", "core_numerics", "non_sdpa_student", "ou_build_model",
                                        "ou_ASU_KL", "ou_NPO", "flex_student"]
    assert sum(s.limit_s for s in stages) <= gpu_check.CAP_S == 240
    assert all(Path(s.argv[1]).is_file() for s in stages if s.argv)
    kl = gpu_check.ou_overrides("ASU_KL", tmp_path)
    assert "experiment=unlearn/muse/asu" in kl and "trainer=ASU_KL" in kl
    assert "data.forget.MUSE_forget.args.max_length=512" in kl  # sequence 512
    npo = gpu_check.ou_overrides("NPO", tmp_path)
    assert "experiment=unlearn/muse/default" in npo and "trainer=NPO" in npo
    # an unprepared carry folder: the plan is still checked, the carry reported with its fix
    result = gpu_check.dry_run(tmp_path / "no-carry", tmp_path)
    assert result["passed"] is True and result["checks"]["carry"]["prepared"] is False
    assert "make gpu-wheels" in result["checks"]["carry"]["fix"]


def test_summary_ratios(gpu_check):
    stages = {"ou_ASU_KL": {"status": "passed", "result": {"median_step_seconds": 0.3, "peak_gib": 30.0}},
              "ou_NPO": {"status": "passed", "result": {"median_step_seconds": 0.25, "peak_gib": 24.0}}}
    summary = gpu_check.summary(stages)
    assert summary["step_time_ratio_ASU_KL_to_NPO"] == pytest.approx(1.2)
    assert summary["peak_memory_ratio_ASU_KL_to_NPO"] == pytest.approx(1.25)
    document = {"meta": {"cap_s": 240, "started": "now", "device": "NVIDIA H200"}, "stages": stages, "summary": summary}
    assert "| ou_NPO | passed |" in gpu_check.markdown(document)


def test_stages_are_recorded_one_by_one_within_the_cap(gpu_check, tmp_path):
    """Each stage's outcome is in gpu_check.json as soon as it ends; a failing or slow stage does
    not stop the next; the cap cuts what no time is left for."""
    report = tmp_path / "out" / "gpu_check.json"

    def stage(name, code, limit=20):
        return gpu_check.Stage(name, "native", limit, (sys.executable, "-c", code))

    emit = "import json; print('GPU_CHECK_JSON ' + json.dumps({}))"
    peek = f"import json; stages = sorted(json.load(open({str(report)!r}))['stages']); print('GPU_CHECK_JSON ' + json.dumps({{'seen': stages}}))"
    stages = [stage("ok", emit.format("{'x': 1}")), stage("broken", "raise SystemExit(3)"),
              stage("slow", "import time; time.sleep(30)", limit=1), stage("peek", peek),
              stage("late", "import time; time.sleep(30)")]
    document = gpu_check.run_all(tmp_path / "out", tmp_path, tmp_path, stages=stages, cap_s=3, min_left_s=0.2)
    status = {name: s["status"] for name, s in document["stages"].items()}
    assert {k: v for k, v in status.items() if k != "late"} == {"ok": "passed", "broken": "error", "slow": "timeout",
                                                                "peek": "passed"}
    assert status["late"] in ("timeout", "skipped")  # cut by the cap either way
    assert document["stages"]["ok"]["result"] == {"x": 1}
    assert document["stages"]["peek"]["result"]["seen"] == ["broken", "ok", "slow"]  # written after each stage
    assert "exit 3" in document["stages"]["broken"]["error"]
    written = json.loads(report.read_text())
    assert set(written["stages"]) == set(status) and (tmp_path / "out" / "gpu_check.md").is_file()


@pytest.mark.skipif(not (CARRY / "manifest.json").is_file(),
                    reason="the GPU carry folder is not prepared (run `make gpu-wheels`: ~35 MB of wheels)")
def test_dry_run_with_the_carried_wheels():
    done = subprocess.run([sys.executable, str(BENCH_DIR / "gpu_check.py"), "--dry-run"], capture_output=True,
                          text=True, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_CHECK_JSON ")]
    assert lines, (done.stdout + done.stderr)[-4000:]
    result = json.loads(lines[-1].split(" ", 1)[1])
    checks = result["checks"]
    assert checks["carry"]["passed"] and checks["carry"]["within_64_mib"], checks["carry"]
    imports = checks["imports"]
    assert imports["passed"], imports.get("error", imports)[-4000:] if isinstance(imports.get("error"), str) else imports
    assert imports["versions"]["transformers"] == "4.45.1" and imports["versions"]["lm_eval"] == "0.4.8"
    assert {m: row["handler"] for m, row in imports["composed"].items()} == {"ASU_KL": "ASU_KL", "NPO": "NPO"}
    assert done.returncode == 0
