"""Run OpenUnlearning's own entry points (``src/train.py``, ``src/eval.py``) as resumable jobs.

Multi-step studies (the mini-TOFU benchmark, continual unlearning) chain many OU runs that
each take minutes to an hour on a CPU. A job here is one OU command with one output
directory. It counts as finished only when OU exited 0, which is recorded by a marker file
written atomically *after* the process ended; so a run killed half-way (``kill -9``, a
session ending) leaves no marker, and the next call clears its partial directory and runs
it again, while finished jobs are never redone.

Each job is run by :func:`.process.run_in_ou` (one log file per job), as the demo and the tests
run OU.

Jobs may run side by side (``run_jobs(..., workers=2)``), each started once the jobs it names
in ``after`` have finished. Why: a 135M-parameter model keeps 2 CPU cores busy poorly (small
matrices), so two single-threaded OU runs finish about 1.3x more work per hour than one run
with two threads (measured here on SmolLM2 training steps).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..core.atomic import write_json_atomic
from .process import ou_script_args, run_in_ou

logger = logging.getLogger(__name__)

DONE = ".asu_job_done.json"


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
    after: tuple["OUJob", ...] = ()  # jobs whose outputs this one reads: they must finish first

    def args(self) -> list[str]:
        """What follows ``python`` on the command line (run in OU_DIR)."""
        return ou_script_args(self.script, self.overrides, self.config_name, self.out_dir)

    def command(self) -> str:
        """The command as a user would type it in OU_DIR (shell-quoted)."""
        return shlex.join(["python", *self.args()])

    @property
    def done(self) -> bool:
        return (self.out_dir / DONE).is_file()


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
    log.write_text(f"# {job.command()}\n# cwd: {ou_dir}\n")
    done = run_in_ou(job.args(), ou_dir, log=log, env=env)
    code = done.returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise JobFailed(f"{job.name} failed (exit {code}); full log: {log}\ncommand: {job.command()}\n{tail}")
    record = {"name": job.name, "command": job.command(), "meta": job.meta, "wall_s": done.wall_s,
              "cpu_s": done.cpu_s,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "log": str(log)}
    write_json_atomic(marker, record)
    return record


def run_jobs(jobs: Sequence[OUJob], ou_dir: Path, log_dir: Path, desc: str = "jobs", workers: int = 1,
             on_done: Optional[Callable[[dict], Optional[Sequence[OUJob]]]] = None) -> list[dict]:
    """Run ``jobs`` (finished ones are kept), ``workers`` at a time, each once every job in its
    ``after`` has finished, in list order otherwise; a progress bar and a log line per job.

    With ``workers > 1`` each job gets ``cpu_count // workers`` threads, so the runs share the
    cores instead of fighting over them. On a failure no new job starts; the running ones
    finish (their results are kept), then the first JobFailed is raised. ``on_done(record)`` is
    called after every job run here (not for kept ones); it may return more jobs, which join the
    queue: a study's next step, chosen from results as they land, starts while the rest still
    runs. Returns the done records of ``jobs`` and the added jobs, in that order.
    """
    from tqdm import tqdm

    scheduled, names, pending = [], set(), []

    def schedule(more: Sequence[OUJob]) -> None:
        names.update(id(job) for job in more)
        for job in more:
            for dep in job.after:
                if id(dep) not in names and not dep.done:
                    raise ValueError(f"{job.name} needs {dep.name}, which has not finished and is not among "
                                     "the jobs to run")
        scheduled.extend(more)
        pending.extend(more)

    env = {}
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    schedule(jobs)
    records: dict[int, dict] = {}
    running = {}
    failure: Optional[JobFailed] = None
    with tqdm(total=len(jobs), desc=desc, unit="job") as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        def finished(job: OUJob) -> bool:
            return id(job) in records or (id(job) not in names and job.done)

        while pending or running:
            while failure is None and len(running) < workers:
                ready = next((job for job in pending if all(finished(dep) for dep in job.after)), None)
                if ready is None:
                    break
                pending.remove(ready)
                kept = ready.done
                running[pool.submit(run_job, ready, ou_dir, log_dir, env)] = (ready, kept)
            if not running:
                if failure is None and pending:  # cannot happen for a list with no cycle
                    raise ValueError(f"jobs wait on each other: {[job.name for job in pending]}")
                break
            bar.set_postfix_str(", ".join(job.name for job, _ in running.values()))
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                job, kept = running.pop(future)
                try:
                    record = future.result()
                except JobFailed as error:
                    failure = failure or error
                    continue
                records[id(job)] = record
                logger.info("%s %s (%.0f s)", "kept" if kept else "finished", job.name, record["wall_s"])
                if on_done is not None and not kept:
                    more = on_done(record)
                    if more:
                        schedule(more)
                        bar.total += len(more)
                        bar.refresh()
                bar.update(1)
    if failure is not None:
        raise failure
    return [records[id(job)] for job in scheduled]
