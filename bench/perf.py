#!/usr/bin/env python
"""Performance benchmark of asu-plugin (issue 4): teacher overhead, train step through the
OpenUnlearning trainers, one- vs two-copy design, forget-loss memory, scaling.

    python bench/perf.py                 # full run on SmolLM2-135M (needs a quiet machine)
    python bench/perf.py --quick         # smoke configuration: tiny model, 2 repeats
    python bench/perf.py --only loss     # some sections, merged into the perf.json already in --out
    python bench/perf.py --report-only   # perf.md, figures and README figures again from perf.json
    python bench/perf.py --point NAME    # run one measurement point here, print its JSON

Every figure is a median over interleaved repeats after a warm-up; memory figures come from a
fresh process per point (``--isolation fork``: children forked from an import-only parent;
``exec``: a new python per point). Results go to ``<out>/perf.json``, ``perf.md`` and
``perf_scaling.png``, each written atomically; a full-configuration run into bench/results also
rewrites the figures block of bench/README.md. The work is done by the ``perfbench`` package
next to this file (one module per job); see bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO / "bench"):  # run as a file: asu_plugin and perfbench from this checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from asu_plugin.core.atomic import write_text_atomic  # noqa: E402  (after the path set-up)
from perfbench.config import DEFAULT_MODEL, make_config  # noqa: E402
from perfbench.sections import SECTIONS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 repeats: a smoke run")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="output folder (default bench/results)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections among {', '.join(SECTIONS)} (default all); a partial run "
                        "is merged into the perf.json already in --out (same configuration only)")
    parser.add_argument("--model", default=os.environ.get("ASU_BENCH_MODEL", DEFAULT_MODEL),
                        help="SmolLM2 transformers folder (full run)")
    parser.add_argument("--reps", type=int, default=0, help="override the number of timed repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the children (default torch's)")
    parser.add_argument("--isolation", choices=("fork", "exec"), default="fork",
                        help="fresh process per point: fork from an import-only parent, or exec a new python")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rebuild perf.md, the figures and the README figures from perf.json")
    parser.add_argument("--points", default="",
                        help="with --only: re-measure only the points whose names start with one of these "
                             "comma-separated prefixes (e.g. step_time:gd), merged into the perf.json in --out")
    parser.add_argument("--point", help="run one measurement point in this process and print its JSON")
    parser.add_argument("--point-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sections_of(only: str) -> list[str]:
    sections = [s.strip() for s in only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise SystemExit(f"--only: unknown or no section(s) {unknown}; choose among {', '.join(SECTIONS)}")
    return sections


def run_one_point(cfg, name: str, point_out: str | None) -> int:
    """--point: one point in this process (the child of --isolation exec, or a manual check)."""
    from perfbench.isolation import run_point
    from perfbench.plan import build_plan

    plan = {spec["name"]: spec for spec in build_plan(cfg, list(SECTIONS), ou_ok=True)}
    if name not in plan:
        raise SystemExit(f"unknown point {name!r}; known: {', '.join(plan)}")
    text = json.dumps(run_point(cfg, plan[name]))
    if point_out:
        write_text_atomic(Path(point_out), text)
    else:
        print(text)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("perfbench").setLevel(logging.INFO)
    cfg = make_config(args.quick, args.model, args.reps, args.threads)
    sections = sections_of(args.only)
    if args.point:
        return run_one_point(cfg, args.point, args.point_out)

    from perfbench.run import rebuild_report, run_benchmark

    out = Path(args.out)
    if args.report_only:
        markdown, written = rebuild_report(out)
        failures = {}
    else:
        argv_cfg = (["--quick"] if args.quick else []) + ["--model", cfg["model_path"]] \
            + (["--reps", str(args.reps)] if args.reps else []) \
            + (["--threads", str(args.threads)] if args.threads else [])
        prefixes = tuple(p.strip() for p in args.points.split(",") if p.strip())
        markdown, written, failures = run_benchmark(cfg, sections, out, args.isolation, argv_cfg, prefixes)
    print(markdown)
    print("wrote " + ", ".join(str(path) for path in written))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
