"""What each phase of the study cost, over every session: read from the jobs' done markers and
from ``elapsed_s.json``, which the runner keeps up to date as jobs finish."""

from __future__ import annotations

import json
import time
from pathlib import Path

from asu_plugin.core.atomic import write_json_atomic
from asu_plugin.openunlearning.jobs import DONE

from .settings import SETTINGS

ELAPSED = "elapsed_s.json"
PHASES = ("build", "grid", "seeds")  # in the order they run


def phase_of(meta: dict) -> str:
    """The phase of a job, from its meta: no seed = build; the grid's seed = grid; else seeds."""
    if "seed" not in meta:
        return "build"
    return "grid" if meta["seed"] == SETTINGS["unlearn"]["grid_seed"] else "seeds"


def phase_costs(work: Path) -> dict:
    """What each phase cost, over every session: CPU seconds and job wall seconds summed over
    its finished jobs (jobs of one phase may have run side by side), and the elapsed seconds of
    each runner invocation (ELAPSED, counted up to its last finished job)."""
    costs: dict[str, dict] = {"cpu_s": {}, "job_wall_s": {}}
    for marker in work.glob(f"*/*/{DONE}"):
        record = json.loads(marker.read_text())
        phase = phase_of(record.get("meta", {}))
        for key, value in (("cpu_s", record.get("cpu_s", 0.0)), ("job_wall_s", record["wall_s"])):
            costs[key][phase] = costs[key].get(phase, 0.0) + value
    for key in ("cpu_s", "job_wall_s"):
        costs[key] = {p: costs[key][p] for p in PHASES if p in costs[key]}
    elapsed = work / ELAPSED
    costs["elapsed_s"] = json.loads(elapsed.read_text()) if elapsed.is_file() else {}
    return costs


def elapsed_recorder(work: Path, run: str):
    """An ``on_done`` hook for run_jobs that adds the time since the previous finished job (or
    the start) to ``run``'s entry in work/ELAPSED, so a session ending half-way loses little."""
    last = [time.time()]

    def record(_done: dict) -> None:
        path = work / ELAPSED
        totals = json.loads(path.read_text()) if path.is_file() else {}
        now = time.time()
        totals[run] = totals.get(run, 0.0) + now - last[0]
        last[0] = now
        write_json_atomic(path, totals)

    return record
