"""Run OpenUnlearning's own entry points (``src/train.py``, ``src/eval.py``) as resumable jobs.

Multi-step studies (the mini-TOFU benchmark, continual unlearning) chain many OU runs that
each take minutes to an hour on a CPU. A job here is one OU command with one output
directory. It counts as finished only when OU exited 0, which is recorded by a marker file
written atomically *after* the process ended; so a run killed half-way (``kill -9``, a
session ending) leaves no marker, and the next call clears its partial directory and runs
it again, while finished jobs are never redone.

Why subprocesses rather than calling OU in-process: exactly the commands a user would type
are run (and logged, one log file per job), each with a fresh Hydra, RNG and memory.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .atomic import write_json_atomic

logger = logging.getLogger(__name__)

DONE = ".asu_job_done.json"
# a job's own environment: offline, and OpenMP threads that sleep when idle (on a shared
# 2-core machine busy-waiting threads slow every process down by 10x and more)
JOB_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


class JobFailed(RuntimeError):
    """An OU command exited non-zero; the message holds the command and its log's tail."""


@dataclass
class OUJob:
    """One OU command: ``python src/<script>.py [--config-name=...] <overrides>``, run in OU_DIR."""

    name: str
    script: str  # "train" or "eval"
    overrides: list[str]
    out_dir: Path
    config_name: Optional[str] = None  # e.g. "unlearn.yaml"; None: the script's default
    meta: dict = field(default_factory=dict)  # what the job is (method, lr, seed, ...) for reports

    def argv(self, python: str = sys.executable) -> list[str]:
        config = [f"--config-name={self.config_name}"] if self.config_name else []
        return [python, f"src/{self.script}.py", *config, *self.overrides,
                f"hydra.run.dir={self.out_dir}", f"paths.output_dir={self.out_dir}"]

    def command(self) -> str:
        """The command as a user would type it in OU_DIR (shell-quoted)."""
        return shlex.join(["python", *self.argv()[1:]])

    @property
    def done(self) -> bool:
        return (self.out_dir / DONE).is_file()


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of finished child processes: a job's cost independent of
    how busy the machine was (wall time is not, on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(job: OUJob, ou_dir: Path, log_dir: Path, env: Optional[dict] = None) -> dict:
    """Run ``job`` unless it finished before; return its done record. Raises JobFailed."""
    marker = job.out_dir / DONE
    if job.done:
        return json.loads(marker.read_text())
    if job.out_dir.exists():
        logger.info("%s: clearing the partial output of an interrupted run", job.name)
        shutil.rmtree(job.out_dir)
    job.out_dir.mkdir(parents=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{job.name}.log"
    start, cpu_before = time.time(), _children_cpu_s()
    with open(log, "w") as handle:
        handle.write(f"# {job.command()}\n# cwd: {ou_dir}\n")
        handle.flush()
        code = subprocess.call(job.argv(), cwd=ou_dir, stdout=handle, stderr=subprocess.STDOUT,
                               env={**os.environ, **JOB_ENV, **(env or {})})
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise JobFailed(f"{job.name} failed (exit {code}); full log: {log}\ncommand: {job.command()}\n{tail}")
    record = {"name": job.name, "command": job.command(), "meta": job.meta, "wall_s": time.time() - start,
              "cpu_s": _children_cpu_s() - cpu_before,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "log": str(log)}
    write_json_atomic(marker, record)
    return record


def run_jobs(jobs: Sequence[OUJob], ou_dir: Path, log_dir: Path, desc: str = "jobs") -> list[dict]:
    """Run jobs in order (finished ones are skipped), with a progress bar and a log line each."""
    from tqdm import tqdm

    records = []
    with tqdm(jobs, desc=desc, unit="job") as bar:
        for job in bar:
            bar.set_postfix_str(job.name)
            skipped = job.done
            record = run_job(job, ou_dir, log_dir)
            logger.info("%s %s (%.0f s)", "kept" if skipped else "finished", job.name, record["wall_s"])
            records.append(record)
    return records
