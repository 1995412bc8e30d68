"""asu_plugin.openunlearning.jobs: a finished job is never redone, an interrupted one is redone from scratch.

The jobs here run a stand-in ``src/train.py`` (a few lines of Python that behave like an OU
entry point: Hydra-style ``key=value`` arguments, outputs in ``paths.output_dir``); the real OU
commands go through the same runner in tests/ou/test_continual.py.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from asu_plugin.openunlearning.jobs import DONE, JobFailed, OUJob, run_job, run_jobs

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


SLOW_ENTRY = textwrap.dedent("""
    import os, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    out = args["paths.output_dir"]
    log = os.path.join(out, "..", "events.txt")
    with open(log, "a") as f:
        f.write(f"start {os.path.basename(out)} {os.environ.get('OMP_NUM_THREADS')}\\n")
    if args.get("needs"):
        assert os.path.exists(os.path.join(out, "..", args["needs"], "model.safetensors")), "input missing"
    time.sleep(float(args.get("sleep", "0")))
    if args.get("fail") == "1":
        sys.exit(3)
    open(os.path.join(out, "model.safetensors"), "w").write("weights")
    with open(log, "a") as f:
        f.write(f"end {os.path.basename(out)}\\n")
""")


def _events(tmp_path):
    return (tmp_path / "runs" / "events.txt").read_text().splitlines()


def test_parallel_jobs_wait_for_what_they_read(ou, tmp_path):
    (ou / "src" / "train.py").write_text(SLOW_ENTRY)
    runs = tmp_path / "runs"
    slow = OUJob("slow", "train", ["sleep=1.5"], runs / "slow")
    first = OUJob("first", "train", ["sleep=0.2"], runs / "first")
    second = OUJob("second", "train", ["needs=first"], runs / "second", after=(first,))
    finished = []
    records = run_jobs([slow, second, first], ou, tmp_path / "logs", workers=2, on_done=finished.append)
    events, threads = _events(tmp_path), max(1, os.cpu_count() // 2)  # the cores shared by 2 jobs
    # `second` was listed before `first` but started only after `first` ended, while `slow` ran
    assert events.index("end first") < events.index(f"start second {threads}")
    assert events.index(f"start slow {threads}") < events.index("end first") < events.index("end slow")
    assert [r["name"] for r in records] == ["slow", "second", "first"]  # in the order given
    assert sorted(r["name"] for r in finished) == ["first", "second", "slow"]
    assert all(job.done for job in (slow, first, second))


def test_a_failure_stops_new_jobs_and_keeps_running_ones(ou, tmp_path):
    (ou / "src" / "train.py").write_text(SLOW_ENTRY)
    runs = tmp_path / "runs"
    bad = OUJob("bad", "train", ["fail=1"], runs / "bad")
    long = OUJob("long", "train", ["sleep=1"], runs / "long")
    later = OUJob("later", "train", [], runs / "later", after=(bad,))
    with pytest.raises(JobFailed, match="bad failed"):
        run_jobs([bad, long, later], ou, tmp_path / "logs", workers=2)
    assert long.done and not bad.done and not later.done
    assert not any(e.startswith("start later") for e in _events(tmp_path))


def test_a_dependency_neither_finished_nor_scheduled_is_refused(ou, tmp_path):
    missing = OUJob("missing", "train", [], tmp_path / "runs" / "missing")
    job = OUJob("job", "train", [], tmp_path / "runs" / "job", after=(missing,))
    with pytest.raises(ValueError, match="job needs missing, which has not finished"):
        run_jobs([job], ou, tmp_path / "logs")


def test_jobs_returned_by_on_done_join_the_queue_while_others_run(ou, tmp_path):
    """A study's next step (mini-TOFU's seeds of a method whose grid is evaluated) starts while
    other jobs still run, and waits for what it reads."""
    (ou / "src" / "train.py").write_text(SLOW_ENTRY)
    runs = tmp_path / "runs"
    quick = OUJob("quick", "train", ["sleep=0.2"], runs / "quick")
    long = OUJob("long", "train", ["sleep=2"], runs / "long")
    follow = OUJob("follow", "train", ["needs=quick"], runs / "follow", after=(quick,))
    added = []

    def next_step(record: dict) -> list[OUJob]:
        more = [follow] if record["name"] == "quick" else []
        added.extend(more)
        return more

    records = run_jobs([quick, long], ou, tmp_path / "logs", workers=2, on_done=next_step)
    events = _events(tmp_path)
    start_follow = events.index(next(e for e in events if e.startswith("start follow")))
    assert added == [follow] and follow.done
    assert events.index("end quick") < start_follow < events.index("end long")
    assert [r["name"] for r in records] == ["quick", "long", "follow"]
