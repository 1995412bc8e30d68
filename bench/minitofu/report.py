"""The published results: bench/results/mini_tofu.{json,md} and mini_tofu_scatter.png, written
from the report :func:`.collect.build_report` gathers (every figure comes from there)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from asu_plugin.core.atomic import atomic_path, write_json_atomic, write_text_atomic

from .settings import METHODS, SETTINGS
from .verdict import verdict


def _costs(costs: dict) -> str:
    total = sum(costs.values())
    return ", ".join(f"{k} {v:.0f}" for k, v in costs.items()) + f" (total {total:.0f} = {total / 3600:.1f} h)" \
        if costs else "none yet"


def _f(stat: dict | float | None, digits: int = 3) -> str:
    if isinstance(stat, dict):
        if stat.get("mean") is None:
            return "n/a"
        mean = f"{stat['mean']:.{digits}g}"
        return f"{mean} ± {stat['std']:.{digits - 1}g}" if stat["n"] > 1 else mean
    return "n/a" if stat is None else f"{stat:.{digits}g}"


def _one_line(text: str | None) -> str:
    return "(none)" if text is None else " ".join(text.split()) or "(empty)"


def _settings_lines(meta: dict, costs: dict) -> list[str]:
    s = SETTINGS
    lines = [
        f"- {meta['versions']}; machine: {meta['machine']}",
        f"- target: SmolLM2-135M-Instruct fine-tuned with OU's finetune path on TOFU `full` "
        f"{s['subset']['target_rows']} (20 retain authors + the 2 forget01 authors); retain model: "
        f"{s['subset']['retain_rows']}; {s['finetune']['epochs']} epochs, lr {s['finetune']['lr']:g}, batch "
        f"{s['finetune']['batch'] * s['finetune']['grad_accum']}",
        f"- unlearning: forget01 (40 QA), retain set `full` {s['subset']['retain_rows']}; every method "
        f"{s['unlearn']['epochs']} epochs, effective batch {s['unlearn']['batch'] * s['unlearn']['grad_accum']}, "
        f"AdamW, weight decay {s['unlearn']['weight_decay']}, {s['unlearn']['warmup_steps']} warm-up steps, "
        f"OU's default hyperparameters per method (ASU: tau 2.3, gamma 0.1, alpha 1, all layers); lr grid "
        f"{s['unlearn']['lrs']} on seed 0",
    ]
    changed = {label: row.overrides for label, row in METHODS.items() if row.overrides}
    if changed:
        lines.append("- rows with their own overrides: " + "; ".join(
            f"{label}: " + ", ".join(f"`{o}`" for o in overrides) for label, overrides in changed.items()))
    lines += [
        f"- selection rule (fixed in advance, every method): among its lrs with model_utility >= "
        f"{s['utility_floor']} x the target's, the largest forget_quality (a tie: the smaller lr; none "
        f"qualifies: the largest model_utility); then seeds {s['unlearn']['seeds']} of that lr, mean ± std",
        f"- evaluation: OU's TOFU evaluator (all default metrics), forget01/holdout01 in full, model_utility "
        f"sets on `{s['eval']['utility']}`, generations capped at {s['eval']['max_new_tokens']} new tokens; "
        "forget_quality against the retain model's own TOFU_EVAL.json",
        "- fluency (OU's gibberish metric needs a hub classifier): an answer is fluent when it has >= 2 words, "
        "<= 25% of its word 3-grams repeat and its mean token NLL is <= 5 nats under the *retain* model or the "
        "*base* SmolLM2-Instruct, whichever is lower (neither saw the forget authors, so invented and true facts "
        "cost them alike; the retain model, fine-tuned to always answer, rates refusals like IDK's as high as word "
        "salad, the base chat model does not; asu_plugin.tools.fluency, validated in tests/test_fluency.py); the "
        "retain row scores the retain model's own answers, so its NLL is low by construction. Its known blind spot: "
        "degenerate answers made of real word pieces with little exact repetition (\"Al Al AlKuatra is a Al Al "
        "Althouse recipient\", GradDiff at lr 1e-4) pass as fluent, so read the sample answers beside the rate",
        f"- cost per phase: CPU seconds {_costs(costs['cpu_s'])}; elapsed seconds per runner invocation "
        f"({meta['workers']} OU runs side by side) {_costs(costs['elapsed_s'])}",
    ]
    return lines


def render_markdown(report: dict, meta: dict) -> str:
    lines = ["# Mini-TOFU: ASU beside OU's unlearning methods (SmolLM2-135M-Instruct, CPU)", "",
             *_settings_lines(meta, report["costs"]), ""]
    mem = report.get("memorisation")
    if mem:
        lines += [f"Memorisation check: {mem['text']}: {'ok' if mem['ok'] else 'FAILED'}", ""]
    lines += ["## Results (chosen setting per method, mean ± std over seeds)", "",
              "| method | lr | seeds | forget_quality | model_utility | forget_truth_ratio | forget ROUGE-L | "
              "privleak | fluent answers | median NLL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        fl = m.get("fluency") or {}
        lines.append(f"| {name} | - | - | {_f(m['forget_quality'])} | {_f(m['model_utility'])} | "
                     f"{_f(m['forget_truth_ratio'])} | {_f(m['forget_Q_A_ROUGE'])} | {_f(m['privleak'])} | "
                     f"{_f(fl.get('fluent_rate'))} | {_f(fl.get('median_nll'))} |")
    for row in report["table"]:
        lines.append(f"| {row['method']} | {row['lr']:g} | {len(row['seeds'])} | {_f(row['forget_quality'])} | "
                     f"{_f(row['model_utility'])} | {_f(row['forget_truth_ratio'])} | {_f(row['forget_Q_A_ROUGE'])} | "
                     f"{_f(row['privleak'])} | {_f(row['fluent_rate'])} | {_f(row['median_nll'])} |")
    lines += ["", "![model_utility vs forget_quality](mini_tofu_scatter.png)", "",
              "## Grid (seed 0)", "", "| method | lr | forget_quality | model_utility | forget ROUGE-L | fluent |",
              "|---|---|---|---|---|---|"]
    for g in report["grid"]:
        lines.append(f"| {g['method']} | {g['lr']:g} | {_f(g['forget_quality'])} | {_f(g['model_utility'])} | "
                     f"{_f(g['forget_Q_A_ROUGE'])} | {_f((g.get('fluency') or {}).get('fluent_rate'))} |")
    lines += ["", "Chosen: " + "; ".join(f"{m} lr {c['lr']:g} ({c['why']})" for m, c in report["chosen"].items()), ""]
    if report["samples"]:
        labels = list(report["samples"][0]["answers"])
        lines += ["## Sample forget answers (seed 0 of the chosen setting)", ""]
        for i, sample in enumerate(report["samples"], 1):
            lines += [f"**Q{i}. {sample['question']}**", "", f"- *ground truth*: {sample['ground_truth']}"]
            lines += [f"- *{label}*: {_one_line(sample['answers'][label])}" for label in labels]
            lines.append("")
    lines += ["## Verdict", "", report.get("verdict") or "(the comparison has not finished: see the tables above)", ""]
    return "\n".join(lines)


def plot_scatter(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, m in report["models"].items():
        if m["forget_quality"]:
            ax.scatter(m["forget_quality"], m["model_utility"], marker="s", color="black")
            ax.annotate(name, (m["forget_quality"], m["model_utility"]), textcoords="offset points", xytext=(5, 5))
    for row in report["table"]:
        fq, mu = row["forget_quality"], row["model_utility"]
        if fq["mean"] is None:
            continue
        ax.errorbar(fq["mean"], mu["mean"], xerr=fq["std"], yerr=mu["std"], marker="o", capsize=3)
        ax.annotate(f"{row['method']} (lr {row['lr']:g})", (fq["mean"], mu["mean"]), textcoords="offset points",
                    xytext=(5, -12))
    target = report["models"].get("target")
    if target:
        floor = SETTINGS["utility_floor"] * target["model_utility"]
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"selection floor: {SETTINGS['utility_floor']} x target utility", (0.01, floor),
                    xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(0, 4), color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("forget_quality (log; higher = closer to the retain model)")
    ax.set_ylabel("model_utility")
    ax.set_title("Mini-TOFU forget01, SmolLM2-135M-Instruct (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(report: dict, out: Path, meta: dict) -> None:
    """The verdict, then mini_tofu.json, mini_tofu.md and (once there is a point) the scatter plot."""
    report["verdict"] = verdict(report)
    write_json_atomic(out / "mini_tofu.json", {"meta": meta, **report})
    write_text_atomic(out / "mini_tofu.md", render_markdown(report, meta))
    if report["table"] or report["models"]:
        plot_scatter(report, out / "mini_tofu_scatter.png")


def meta_info(ou_dir: Path) -> dict:
    """Versions, machine and time of writing, for the report's header."""
    import platform

    import torch
    import transformers

    from asu_plugin import __version__
    from asu_plugin.openunlearning.environment import ou_commit

    return {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}, asu_plugin "
                        f"{__version__}, OpenUnlearning {ou_commit(ou_dir)}",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
