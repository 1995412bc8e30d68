"""The probe's outputs: ``probe.json``, ``probe.png``, ``generations.json`` and the text the CLI prints.

Files are written atomically (:mod:`asu_plugin.core.atomic`). The plot shows the mean NLL vs
tau, one curve per token class and layer set; tau = 1 is the plain model.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from ...core.atomic import atomic_path, write_json_atomic
from .errors import ProbeError
from .settings import setting_key
from .words import CLASSES, ECHO, FACTUAL, FUNCTION

SCHEMA = "asu-probe/1"
JSON_NAME = "probe.json"
PNG_NAME = "probe.png"
GENERATE_JSON_NAME = "generations.json"


def plot_report(report: dict, path: Path) -> Path:
    """Mean NLL vs tau, one curve per token class (line style) and layer set (colour)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
    except ImportError:
        raise ProbeError(
            f"matplotlib is not installed, so {path} cannot be drawn: pip install matplotlib"
        ) from None

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    styles = {FACTUAL: "-", FUNCTION: "--", ECHO: ":"}
    markers = {FACTUAL: "o", FUNCTION: "s", ECHO: "^"}
    colours = [f"C{i}" for i in range(10)]
    taus = sorted(set(report["taus"]))
    for i, ls in enumerate(report["layer_sets"]):
        for c in CLASSES:
            if not report["plain"]["n_tokens"].get(c):
                continue
            xs, ys = [1.0], [report["plain"]["mean_nll"][c]]
            for tau in taus:
                entry = next(g for g in report["grid"] if g["tau"] == tau and g["layers"] == ls)
                if tau != 1.0:
                    xs.append(tau)
                    ys.append(entry["mean_nll"][c])
            ax.plot(xs, ys, styles[c], marker=markers[c], color=colours[i % 10], label=f"{c}, layers {ls}")
    ax.set_xlabel("tau (1 = plain model)")
    ax.set_ylabel("mean NLL per answer token (nats)")
    ax.set_title(f"ASU tau-probe: {report['model_class']}, {report['n_questions']} questions", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.text(0.01, -0.01, textwrap.fill(report["recommendation_line"], 130), fontsize=6.5, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def write_outputs(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``probe.json`` and ``probe.png`` in ``out_dir``: their paths."""
    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / JSON_NAME, report)
    png_path = plot_report(report, out_dir / PNG_NAME)
    return json_path, png_path


def write_generations(generations: Sequence[dict], out_dir: str | os.PathLike) -> Path:
    """``generations.json`` (the greedy answers of ``run_generate``) in ``out_dir``: its path."""
    return write_json_atomic(Path(out_dir) / GENERATE_JSON_NAME, {"schema": SCHEMA, "generations": generations})


def _one_line(text: str) -> str:
    if not text.strip():
        return "(no text: ended its turn at once)"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _fmt(value: Optional[float], spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_generations(generations: Sequence[dict]) -> list[str]:
    """Lines for the terminal: each prompt, its plain answer and its answer under every setting."""
    lines = []
    for item in generations:
        lines.append(f"Q: {_one_line(item['prompt'])}")
        lines.append(f"  {'plain':<24}: {_one_line(item['plain'])}")
        lines += [f"  {key:<24}: {_one_line(text)}" for key, text in item["smoothed"].items()]
    return lines


def format_report(report: dict) -> list[str]:
    """Lines for the terminal: the plain NLL per class, one line per setting, the recommendation."""
    p = report["plain"]
    lines = [
        f"plain: NLL factual {_fmt(p['mean_nll'][FACTUAL], '.3f')} ({p['n_tokens'][FACTUAL]} tok), "
        f"function {_fmt(p['mean_nll'][FUNCTION], '.3f')} ({p['n_tokens'][FUNCTION]} tok), "
        f"echo {_fmt(p['mean_nll'][ECHO], '.3f')} ({p['n_tokens'][ECHO]} tok)"
    ]
    for g in report["grid"]:
        survival = "" if g["survival_rate"] is None else f" survives {g['survival_rate']:.0%}"
        lines.append(
            f"{setting_key(g['tau'], g['layers']):<24} NLL factual {_fmt(g['mean_nll'][FACTUAL], '.3f')} "
            f"({_fmt(g['delta_nll'][FACTUAL])}) function {_fmt(g['mean_nll'][FUNCTION], '.3f')} "
            f"({_fmt(g['delta_nll'][FUNCTION])}) increase ratio {_fmt(g['increase_ratio'], '.2f')}{survival}"
        )
    lines.append(report["recommendation_line"])
    return lines
