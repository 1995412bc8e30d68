"""Scaling: step time and peak RSS vs answer length, for the configured methods (ASU_KL and
NPO_KL: the pair with the same two frozen passes).

One fresh process per (method, answer length, repeat), interleaved: trainer, primed AdamW state,
a warm-up step at the shortest length (it warms the process: thread pool, allocator, kernels),
then one timed step whose time and peak RSS are that point's samples. Least-squares slopes per
1000 answer tokens, their ratio, and the figure ``perf_scaling.png``.
"""

from __future__ import annotations

from ..stats import fmt, slope, summary

NAME = "scaling"
NEEDS_OU = True
POINTS: dict = {}  # its points are step_rss points (sections.step)
FIGURE = "perf_scaling.png"


def plan(cfg) -> list[dict]:
    c = cfg["scaling"]
    points = []
    for rep in range(c["reps"]):
        for answer in (c["answers"] if rep % 2 == 0 else c["answers"][::-1]):
            for method in (c["methods"] if rep % 2 == 0 else c["methods"][::-1]):
                points.append({"name": f"scale:{method}:A{answer}:r{rep}", "kind": "step_rss", "method": method,
                               "needs_ou": True, "batch": c["batch"], "seq": c["prompt"] + answer,
                               "prompt": c["prompt"], "warmup": c["warmup"],
                               "warmup_seq": c["prompt"] + min(c["answers"])})
    return points


def analyse(cfg, results, report) -> None:
    if not any(name.startswith("scale:") for name in results):
        return
    c = cfg["scaling"]
    series = {}
    for method in c["methods"]:
        xs, times, peaks = [], [], []
        for answer in c["answers"]:
            points = [r for k, r in results.items() if k.startswith(f"scale:{method}:A{answer}:")]
            if not points:
                continue
            xs.append(answer)
            times.append(summary([r["step_s"] for r in points]))
            peaks.append(summary([r["peak_rss_mb"] for r in points]))
        series[method] = {
            "answers": xs, "step_s": times, "peak_rss_mb": peaks,
            "time_slope_s_per_1k": 1000 * slope(xs, [t["median"] for t in times]),
            "rss_slope_mb_per_1k": 1000 * slope(xs, [m["median"] for m in peaks]) if all(peaks) else None,
        }
    scaling = {"prompt": c["prompt"], "batch": c["batch"], "processes": c["reps"], "series": series}
    first, last = c["methods"][0], c["methods"][-1]
    if first != last:
        scaling["time_slope_ratio"] = (series[first]["time_slope_s_per_1k"] / series[last]["time_slope_s_per_1k"]
                                       if series[last]["time_slope_s_per_1k"] else None)
        both = series[first]["rss_slope_mb_per_1k"], series[last]["rss_slope_mb_per_1k"]
        scaling["rss_slope_ratio"] = both[0] / both[1] if all(both) else None
    report["scaling"] = scaling


def render(report) -> list[str]:
    sc = report.get("scaling")
    if not sc:
        return []
    lines = ["", f"## Scaling (batch {sc['batch']}, prompt {sc['prompt']}, forget + retain)", "",
             f"![scaling]({FIGURE})", "",
             f"Fresh process per point: a warm-up step at the shortest length, then one timed step; medians of "
             f"{sc['processes']} processes.", "",
             "| method | answer tokens | step s (median, IQR) | peak RSS MB (median) |", "|---|---|---|---|"]
    for method, series in sc["series"].items():
        for a, t, mem in zip(series["answers"], series["step_s"], series["peak_rss_mb"]):
            lines.append(f"| {method} | {a} | {t['median']:.3f} ({t['q1']:.3f}-{t['q3']:.3f}) | "
                         + (f"{mem['median']:.0f}" if mem else "n/a") + " |")
    lines += [""] + [f"- {method}: fitted slope {s['time_slope_s_per_1k']:.3f} s and "
                     f"{fmt(s['rss_slope_mb_per_1k'], 0)} MB per 1000 answer tokens"
                     for method, s in sc["series"].items()]
    if sc.get("time_slope_ratio") is not None:
        methods = list(sc["series"])
        lines.append(f"- slope ratio {methods[0]} / {methods[-1]}: time {fmt(sc['time_slope_ratio'])}, "
                     f"peak RSS {fmt(sc.get('rss_slope_ratio'))}")
    return lines


def plot(report):
    """The scaling figure (matplotlib Figure), or None without scaling results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scaling = report.get("scaling")
    if not scaling:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    xs = []
    for method, s in scaling["series"].items():
        xs = s["answers"]
        med = [t["median"] for t in s["step_s"]]
        err = [[m - t["q1"] for m, t in zip(med, s["step_s"])], [t["q3"] - m for m, t in zip(med, s["step_s"])]]
        ax_t.errorbar(xs, med, yerr=err, marker="o", capsize=3,
                      label=f"{method} ({s['time_slope_s_per_1k']:.2f} s / 1k tokens)")
        if all(s["peak_rss_mb"]):
            ax_m.plot(xs, [m["median"] for m in s["peak_rss_mb"]], marker="o",
                      label=f"{method} ({s['rss_slope_mb_per_1k']:.0f} MB / 1k tokens)")
    ax_t.set(xlabel="answer tokens per sample", ylabel="step time (s), median and IQR", xscale="log", yscale="log")
    ax_m.set(xlabel="answer tokens per sample", ylabel="peak RSS (MB)", xscale="log")
    for ax in (ax_t, ax_m):
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Step time and peak memory vs answer tokens (batch {scaling['batch']}, prompt {scaling['prompt']})")
    fig.tight_layout()
    return fig


def why(goal, report) -> str:
    return f"**{goal['name']}**: {goal['text']}."
