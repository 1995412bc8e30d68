"""From raw point results to the report: analysis, perf.md and the figures.

The analysis reads only ``raw`` (every sample of every point) and the configuration, so a
report can be rebuilt from perf.json at any time (``perf.py --report-only``), and a partial run
merged into an earlier perf.json is analysed as a whole.
"""

from __future__ import annotations

from pathlib import Path

from asu_plugin.core.atomic import atomic_path

from .sections import SECTIONS
from .stats import fmt


def analyse(cfg: dict, results: dict) -> dict:
    """{goals, goal_limits, <one key per measured section>} from the raw results."""
    report: dict = {"goals": [], "goal_limits": dict(cfg["goals"])}
    for module in SECTIONS.values():
        module.analyse(cfg, results, report)
    return report


def why_notes(report) -> list[str]:
    """Data-driven explanations for each missed goal, from the section that set it."""
    return [SECTIONS[goal["section"]].why(goal, report) for goal in report["goals"] if goal["met"] is False]


def _minutes(seconds: dict) -> str:
    return ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())


def header_lines(meta) -> list[str]:
    """Machine, versions, threads, model, timing and load of the run (and of any re-measured sections)."""
    m = meta["machine"]
    lines = [
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs (affinity {m['affinity']}), {fmt(m['memory_gib'], 1)} GiB, "
        f"{m['platform']}",
        f"- versions: python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"asu_plugin {m['asu_plugin']}, OpenUnlearning {m['open_unlearning_commit']}",
        f"- torch threads in the measuring processes: {m['torch_threads']} (machine default: "
        f"{'; '.join(line for line in m['torch_parallel'] if 'get_num' in line or 'OpenMP' in line or 'MKL' in line)})",
        f"- model: {meta['model']}; isolation: {meta['isolation']} (fresh process per point); "
        f"load average start {meta['loadavg_start']}, end {meta['loadavg_end']}",
        f"- started {meta['started']}, took {meta['elapsed_s'] / 60:.1f} min ({_minutes(meta['section_seconds'])} min)",
    ]
    for rerun in meta.get("reruns", []):
        rm = rerun["machine"]
        lines.append(f"- re-measured later: {', '.join(rerun['sections'])} (started {rerun['started']}, took "
                     f"{rerun['elapsed_s'] / 60:.1f} min: {_minutes(rerun['section_seconds'])} min; "
                     f"load average start {rerun['loadavg_start']}, end "
                     f"{rerun['loadavg_end']}; torch {rm['torch']}, {rm['torch_threads']} threads, "
                     f"{rm['cpu_count']} CPUs)")
    if meta.get("skipped"):
        lines.append(f"- skipped: {meta['skipped']}")
    for name, error in meta.get("failed_points", {}).items():
        lines.append(f"- **FAILED point {name}**: {error}")
    for run in [meta, *meta.get("reruns", [])]:
        cores = (run.get("machine") or m)["affinity"] or 1
        if run["loadavg_start"][0] > 0.5 * cores:
            lines.append(f"- **warning: the machine was busy when the run started at {run['started']} (load average "
                         f"{run['loadavg_start'][0]} on {cores} cores); its timings are not representative**")
    return lines


def render_markdown(report, meta) -> str:
    lines = ["# asu-plugin performance"
             + (" (QUICK smoke configuration: tiny model, numbers meaningless)" if meta["quick"] else ""), ""]
    lines += header_lines(meta)
    lines += ["", "## Goals", "", "| measure | goal | result | met |", "|---|---|---|---|"]
    lines += goal_rows(report)
    for module in SECTIONS.values():
        lines += module.render(report)
    notes = why_notes(report)
    if notes:
        lines += ["", "## Missed goals: by how much and why", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def goal_rows(report) -> list[str]:
    return [f"| {g['name']} | {g['goal']} | {g['text']} | {'yes' if g['met'] else 'NO'} |" for g in report["goals"]]


def write_figures(report, out: Path) -> list[str]:
    """Each section's figure (atomically), for the sections that have one and results for it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for module in SECTIONS.values():
        if not hasattr(module, "plot"):
            continue
        fig = module.plot(report)
        if fig is None:
            continue
        try:
            with atomic_path(out / module.FIGURE) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
        finally:
            plt.close(fig)
        written.append(module.FIGURE)
    return written
