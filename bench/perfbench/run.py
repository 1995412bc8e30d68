"""A benchmark run, from the plan to perf.json, perf.md, the figures and the README's figures.

A run of some sections (``--only``) into a folder that already holds a perf.json made with the
same configuration is merged into it: its points replace the old ones of the same names, the
report is rebuilt from all raw results, and ``meta.reruns`` records when and where they were
measured. With another configuration the merge is refused (it would mix two benchmarks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from asu_plugin.core.atomic import write_text_atomic
from asu_plugin.openunlearning.environment import OFFLINE_ENV

from .comparisons import check_comparisons
from .isolation import PointFailed, run_exec, run_forked
from .machine import loadavg, machine_info, now
from .ou_trainers import import_ou, quiet_libraries
from .plan import build_plan
from .readme import update_readme
from .report import analyse, render_markdown, write_figures
from .sections import SECTIONS
from .stats import strict_json

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
README = REPO / "bench" / "README.md"


def prepare_parent(cfg) -> tuple[bool, str, dict]:
    """Import what the measuring processes need (fork isolation shares the cost), without running
    a torch op here; return (OU importable, reason if not, {"open_unlearning": import seconds}).
    (torch itself is already imported with asu_plugin.)"""
    os.environ.update(OFFLINE_ENV)  # nothing is downloaded while measuring
    quiet_libraries()
    check_comparisons(cfg)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    start = time.perf_counter()
    ou_ok, reason = import_ou()
    seconds = {"open_unlearning": time.perf_counter() - start}
    if not ou_ok:
        logger.warning("skipping the sections that need OpenUnlearning (%s)", reason)
    if cfg["model"] != "tiny" and not Path(cfg["model_path"]).is_dir():
        raise SystemExit(f"model not found at {cfg['model_path']} (run `make model`, or pass --model)")
    return ou_ok, reason, seconds


def measure(cfg, plan, isolation: str, argv_cfg: list[str], logdir: Path):
    """Run every point in a fresh process; a failed point is recorded, the run goes on."""
    from tqdm import tqdm

    results, failures, section_seconds = {}, {}, {}
    with tqdm(total=len(plan), desc="bench", unit="point", dynamic_ncols=True) as bar:
        for spec in plan:
            bar.set_postfix_str(spec["name"])
            begin = time.perf_counter()
            try:
                if isolation == "fork":
                    results[spec["name"]] = run_forked(cfg, spec, logdir)
                else:
                    results[spec["name"]] = run_exec(spec, logdir, argv_cfg)
            except PointFailed as error:  # keep going: one broken point must not cost the whole run
                failures[spec["name"]] = str(error)
                tqdm.write(str(error), file=sys.stderr)
            section_seconds[spec["section"]] = section_seconds.get(spec["section"], 0.0) + time.perf_counter() - begin
            bar.update(1)
    return results, failures, section_seconds


def previous_document(out: Path, cfg, sections, partial: bool = False) -> dict | None:
    """The perf.json a partial run (some sections, or ``partial``: some points) merges into (None
    for a full run or an empty folder); checked before anything is measured: SystemExit when it
    was made with another configuration."""
    path = out / "perf.json"
    if (set(sections) == set(SECTIONS) and not partial) or not path.is_file():
        return None
    previous = json.loads(path.read_text())
    check_mergeable(previous, cfg, sections, path)
    return previous


#: configuration keys that only judge the measured figures (the goals' limits): a partial run may
#: change them, and the merged document is analysed with the new ones
JUDGING_KEYS = ("goals",)


def check_mergeable(previous: dict, cfg, sections, path: Path | str = "perf.json") -> None:
    old = previous["meta"]["config"]
    changed = sorted(k for k in set(cfg) | set(old) if cfg.get(k) != old.get(k) and k not in JUDGING_KEYS)
    if changed:
        raise SystemExit(
            f"{path} was made with another configuration (differs in: {', '.join(changed)}); re-measuring "
            f"only {', '.join(sections)} would mix two benchmarks. Run every section (omit --only), or pass "
            "--out to a new folder.")


def _merge(previous: dict, cfg, plan, results, failures, run: dict, sections, skipped: str) -> dict:
    """``previous`` (an earlier perf.json) with this run's points in place of the same-named ones."""
    meta = previous["meta"]
    planned = {spec["name"] for spec in plan}
    raw = {name: result for name, result in previous["raw"].items() if name not in planned}
    raw.update(results)
    meta = {**meta, "config": {**meta["config"], **{k: cfg[k] for k in JUDGING_KEYS}},
            "reruns": [*meta.get("reruns", []), run],
            "sections": [s for s in SECTIONS if s in meta["sections"] or s in sections],
            "failed_points": {**{k: v for k, v in meta.get("failed_points", {}).items() if k not in planned},
                              **{name: error.splitlines()[0] for name, error in failures.items()}}}
    if skipped:
        meta["skipped"] = skipped
    return {"meta": meta, "raw": raw}


def run_benchmark(cfg, sections, out: Path, isolation: str, argv_cfg: list[str], points: tuple[str, ...] = ()):
    """Measure ``sections`` (only their points named with one of the ``points`` prefixes, if any)
    into ``out``, merging into an earlier perf.json there when partial; return (Markdown, paths
    written, {failed point: error})."""
    started, load_start, t_start = now(), loadavg(), time.perf_counter()
    previous = previous_document(out, cfg, sections, partial=bool(points))
    ou_ok, ou_reason, import_seconds = prepare_parent(cfg)
    skipped = "" if ou_ok else f"train step, design and scaling sections: {ou_reason}"
    plan = build_plan(cfg, sections, ou_ok)
    if points:
        plan = [spec for spec in plan if spec["name"].startswith(points)]
        if not plan:
            raise SystemExit(f"--points {','.join(points)}: no point of {', '.join(sections)} starts with it")
    out.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="asu-bench-"))
    os.environ["ASU_BENCH_TMP"] = str(logdir)  # the children's trainer output_dirs go here too
    results, failures, section_seconds = measure(cfg, plan, isolation, argv_cfg, logdir)
    threads = next((r["threads"] for r in results.values() if "threads" in r), None)
    run = {"sections": list(sections), "points": list(points), "started": started,
           "elapsed_s": time.perf_counter() - t_start,
           "section_seconds": section_seconds, "loadavg_start": load_start, "loadavg_end": loadavg(),
           "isolation": isolation, "import_seconds": import_seconds, "machine": machine_info(threads)}
    if previous is not None:
        document = _merge(previous, cfg, plan, results, failures, run, sections, skipped)
        logger.info("merged %d new point(s) into %s", len(results), out / "perf.json")
    else:
        model = "tiny Llama from config" if cfg["model"] == "tiny" else cfg["model_path"]
        meta = {"quick": cfg["quick"], "model": model,
                "isolation": isolation, "started": started, "elapsed_s": run["elapsed_s"],
                "section_seconds": section_seconds, "loadavg_start": load_start, "loadavg_end": run["loadavg_end"],
                "skipped": skipped, "sections": list(sections), "import_seconds": import_seconds,
                "failed_points": {name: error.splitlines()[0] for name, error in failures.items()},
                "machine": run["machine"], "config": cfg}
        document = {"meta": meta, "raw": results}
    markdown, written = write_report(document, out)
    if failures:
        logger.error("%d point(s) failed: %s (logs in %s)", len(failures), ", ".join(failures), logdir)
    else:
        shutil.rmtree(logdir, ignore_errors=True)  # kept when a point failed: its log is named in the error
    return markdown, written, failures


def write_report(document: dict, out: Path) -> tuple[str, list[Path]]:
    """Analyse ``document["raw"]`` and write perf.json, perf.md, the figures and, for the full
    configuration in bench/results, the README's figures; return (Markdown, paths written)."""
    meta, raw = document["meta"], document["raw"]
    meta["peak_rss_reset_supported"] = all(r.get("peak_rss_reset", False) for r in raw.values())
    report = analyse(meta["config"], raw)
    figures = write_figures(report, out)
    meta["plot"] = figures[0] if figures else None
    document = {"meta": meta, **report, "raw": raw}
    markdown = render_markdown(report, meta)
    write_text_atomic(out / "perf.json", json.dumps(strict_json(document), indent=1, allow_nan=False) + "\n")
    write_text_atomic(out / "perf.md", markdown)
    written = [out / "perf.json", out / "perf.md", *(out / name for name in figures)]
    if not meta["quick"] and out.resolve() == RESULTS.resolve():
        if update_readme(README, json.loads((out / "perf.json").read_text())):
            written.append(README)
    return markdown, written


def rebuild_report(out: Path) -> tuple[str, list[Path]]:
    """--report-only: the report files again from ``out/perf.json``'s raw results, nothing measured."""
    path = out / "perf.json"
    if not path.is_file():
        raise SystemExit(f"no perf.json in {out}: run the benchmark first (python bench/perf.py --out {out})")
    document = json.loads(path.read_text())
    return write_report({"meta": document["meta"], "raw": document["raw"]}, out)
