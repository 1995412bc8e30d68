"""asu_plugin.ou_jobs: a finished job is never redone, an interrupted one is redone from scratch.

The jobs here run a stand-in ``src/train.py`` (a few lines of Python that behave like an OU
entry point: Hydra-style ``key=value`` arguments, outputs in ``paths.output_dir``); the real OU
commands go through the same runner in tests/ou/test_continual.py.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from asu_plugin.ou_jobs import DONE, JobFailed, OUJob, run_job, run_jobs

ENTRY = textwrap.dedent("""
    import os, sys
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    out = args["paths.output_dir"]
    with open(os.path.join(out, "..", "calls.txt"), "a") as f:
        f.write(out + "\\n")
    if args.get("fail") == "1":
        print("Traceback ...\\nValueError: bad things", file=sys.stderr)
        sys.exit(3)
    open(os.path.join(out, "model.safetensors"), "w").write("weights")
""")


@pytest.fixture
def ou(tmp_path):
    (tmp_path / "ou" / "src").mkdir(parents=True)
    (tmp_path / "ou" / "src" / "train.py").write_text(ENTRY)
    return tmp_path / "ou"


def _calls(tmp_path):
    path = tmp_path / "runs" / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_finished_jobs_are_kept(ou, tmp_path):
    job = OUJob("a", "train", ["x=1"], tmp_path / "runs" / "a", meta={"step": 1})
    record = run_job(job, ou, tmp_path / "logs")
    assert job.done and record["meta"] == {"step": 1} and record["wall_s"] >= 0
    assert json.loads((job.out_dir / DONE).read_text())["command"].startswith("python src/train.py x=1")
    again = run_job(job, ou, tmp_path / "logs")
    assert again == record and len(_calls(tmp_path)) == 1  # not run twice


def test_an_interrupted_job_is_cleared_and_redone(ou, tmp_path):
    job = OUJob("b", "train", [], tmp_path / "runs" / "b")
    job.out_dir.mkdir(parents=True)
    (job.out_dir / "checkpoint-1").mkdir()  # what a killed run leaves: output, no done-marker
    run_jobs([job], ou, tmp_path / "logs")
    assert job.done and not (job.out_dir / "checkpoint-1").exists()
    assert (job.out_dir / "model.safetensors").read_text() == "weights"


def test_a_failed_job_names_its_command_and_log(ou, tmp_path):
    job = OUJob("c", "train", ["fail=1"], tmp_path / "runs" / "c")
    with pytest.raises(JobFailed, match=r"c failed \(exit 3\)") as error:
        run_job(job, ou, tmp_path / "logs")
    assert "ValueError: bad things" in str(error.value) and "python src/train.py fail=1" in str(error.value)
    assert str(tmp_path / "logs" / "c.log") in str(error.value)
    assert not job.done
