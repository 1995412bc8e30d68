#!/usr/bin/env python
"""Mini-TOFU: ASU beside OU's GradDiff, NPO, SimNPO and IDK (DPO) in OU's own TOFU metrics, on
a CPU, with a real pretrained model (issue 7). Resumable: run it again and it goes on.

    python bench/mini_tofu.py                  # everything (make bench-tofu)
    python bench/mini_tofu.py --until build    # only the target / retain models and their evals
    python bench/mini_tofu.py --dry-run        # print every OU command, run nothing
    python bench/mini_tofu.py --report         # rewrite the results from what has finished

Phases (every model and evaluation is one OU command, see asu_plugin.openunlearning.jobs):

1. **build**: SmolLM2-135M-Instruct fine-tuned with OU's finetune path on 440 TOFU QA (the 20
   authors of ``retain_perturbed`` = rows 0-399 of ``full``, and the 2 forget01 authors = rows
   3960-3999) -> *target*; on rows 0-399 only -> *retain*. Both evaluated with OU's TOFU
   evaluator; the retain model's TOFU_EVAL.json is the ``retain_logs_path`` of every other
   evaluation, so ``forget_quality`` is OU's own. The target must memorise (checked).
2. **grid**: every method x 2 learning rates, seed 0, unlearning forget01 with the retain set
   ``full[:400]`` (the target's own retain rows; OU's ``retain_split`` would name retain99).
3. **seeds**: per method the setting chosen by the rule fixed below, seeds 1 and 2.
4. **report**: fluency of the generated forget answers (asu_plugin.tools.fluency, scored by the
   retain model and the base model), then bench/results/mini_tofu.{json,md} and mini_tofu_scatter.png.

Phases 1 and 2 form one dependency graph (asu_plugin.openunlearning.jobs): the grid's unlearning runs need
only the target, so they run beside the retain model's finetune; every evaluation waits for the
retain model's log. A method's seeds join the same queue as soon as its own grid is evaluated
(the rule reads only that method's grid), so no core waits for the slowest method's grid.
``--workers`` OU runs go side by side (default 2 on 2 cores: two single-threaded runs do ~1.3x
the work of one two-threaded run). The memorisation check gates the seeds phase.

Selection rule (fixed before any result): per method, among its grid settings with
model_utility >= 0.9 x the target's, the largest forget_quality (a tie: the smaller lr, the
gentler change); if none qualifies, the largest model_utility. The same rule for every method.
Seeds 0-2 of that setting are reported.

The study lives in the package bench/minitofu/ (settings and method rows, plan, selection rule,
caches, report, verdict); this file is its command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO / "bench"):  # bench/ is not installed: its package minitofu sits beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from asu_plugin.openunlearning.environment import ou_dir as default_ou_dir  # noqa: E402
from asu_plugin.openunlearning.jobs import OUJob, run_jobs  # noqa: E402
from minitofu.collect import build_report  # noqa: E402
from minitofu.costs import elapsed_recorder  # noqa: E402
from minitofu.evals import load_summary  # noqa: E402
from minitofu.kit import KIT_README, update_kit  # noqa: E402
from minitofu.plan import Plan  # noqa: E402
from minitofu.report import meta_info, write_outputs  # noqa: E402
from minitofu.selection import check_memorisation, seed_jobs_ready  # noqa: E402
from minitofu.settings import DEFAULT_BASE, DEFAULT_WORK  # noqa: E402

logger = logging.getLogger("mini_tofu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.environ.get("ASU_MINI_TOFU_DIR", DEFAULT_WORK),
                        help="models, runs and evaluations (outside the repo; default %(default)s)")
    parser.add_argument("--ou-dir", default=str(default_ou_dir()), help="OU checkout (default $OU_DIR or %(default)s)")
    parser.add_argument("--base-model", default=os.environ.get("ASU_MODEL_DIR", DEFAULT_BASE))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--until", choices=["build", "grid", "seeds", "report"], default="report")
    parser.add_argument("--report", action="store_true", help="only rewrite the results from finished jobs")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="OU runs side by side, sharing the cores (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the OU commands of every phase and exit")
    parser.add_argument("--kit-only", action="store_true",
                        help="only rewrite the community kit README's block from <out>/mini_tofu.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.kit_only:
        changed = update_kit(json.loads((Path(args.out) / "mini_tofu.json").read_text()))
        logger.info("%s %s", "rewrote" if changed else "unchanged:", KIT_README)
        return 0
    work, ou_dir = Path(args.work).expanduser(), Path(args.ou_dir).expanduser()
    plan = Plan(work, Path(args.base_model).expanduser())
    if args.dry_run:
        for job in plan.build_jobs() + plan.grid_jobs():
            sys.stdout.write(f"{job.name}: {job.command()}\n")
        return 0
    if not (ou_dir / "src" / "train.py").is_file():
        raise SystemExit(f"OpenUnlearning not found at {ou_dir}: run `make ou` or pass --ou-dir / set OU_DIR")
    if not plan.base.is_dir():
        raise SystemExit(f"base model not found at {plan.base}: run `make model` (asu-prepare-model prepare-smollm2)")

    if not args.report:
        # one dependency graph: the grid's unlearning runs need only the target, so they run beside
        # the retain model's build; a method's seeds join as soon as its grid is evaluated
        name = {"build": "build", "grid": "build+grid"}.get(args.until, "build+grid+seeds")
        with_seeds, chosen = name.endswith("seeds"), set()
        record_elapsed = elapsed_recorder(work, name)

        def on_done(record: dict) -> list[OUJob]:
            record_elapsed(record)
            return seed_jobs_ready(plan, chosen) if with_seeds else []

        jobs = plan.build_jobs() + ([] if args.until == "build" else plan.grid_jobs())
        jobs += seed_jobs_ready(plan, chosen) if with_seeds else []
        logger.info("phase %s: %d jobs (%d finished before), %d side by side", name, len(jobs),
                    sum(j.done for j in jobs), args.workers)
        run_jobs(jobs, ou_dir, work / "logs", desc=name, workers=args.workers, on_done=on_done)
        memorised = check_memorisation(load_summary(plan.eval_dir("target")), load_summary(plan.eval_dir("retain")))
        logger.info("memorisation: %s", memorised["text"])
        if not memorised["ok"]:
            raise SystemExit(
                f"the target does not memorise the forget authors enough: {memorised['text']}. Raise "
                "SETTINGS['finetune'] epochs or lr in bench/minitofu/settings.py, delete the work dir's models/, runs/ "
                "and evals/, and run again.")
    report = build_report(plan)
    out = Path(args.out)
    write_outputs(report, out, {**meta_info(ou_dir), "workers": args.workers})
    logger.info("wrote %s", out / "mini_tofu.md")
    if out.resolve() == (REPO / "bench" / "results").resolve() and update_kit(report):  # the published study only
        logger.info("rewrote the mini-TOFU block of %s", KIT_README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
