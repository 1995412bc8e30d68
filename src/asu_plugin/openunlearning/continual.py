"""Continual unlearning: forget TOFU author blocks one after another through OU's own commands.

    python -m asu_plugin.openunlearning.continual --steps 3 --teacher original --model <dir> --work <dir>

Step k unlearns block k starting from the model of step k-1 (step 1 from ``--model``), with
``src/train.py`` and then evaluates with ``src/eval.py`` (OU's TOFU evaluator) on every block
forgotten so far. Block k is the k-th forget01-sized block of forget10 counted from its end:
block 1 = rows 360-399 of forget10 (= forget01, the last 2 authors), block 2 = rows 320-359,
... (forget10 and its perturbed / holdout10 twins have the rows the evaluator needs).

``--teacher`` says what ASU's frozen model is, explicitly (the authors' scripts silently used
"previous"):

* ``original``: the model given by ``--model`` at every step (``teacher_path``); the student
  keeps moving towards the smoothed original, and the retain KL of ASU_KL is to the original;
* ``previous``: the model the step starts from (OU's default: a copy of the student).

Per step it writes ``<work>/steps/step_<k>.json`` (model_utility, forget_quality when
``--retain-log`` names a matching retain model's TOFU_EVAL.json, and per block forget ROUGE-L
recall and OU's forget truth ratio, with the block's per-row truth ratios) and, after the last,
``<work>/continual.{json,md,png}``. Finished steps are kept when it is run again
(asu_plugin.openunlearning.jobs), and the step JSONs and reports are rewritten from their
TOFU_EVAL.json files: rerunning the same command on a finished work dir only redoes the report.

A block's figures are OU's own aggregates restricted to the block's rows: ROUGE-L recall is a
plain mean (OU's ``forget_Q_A_ROUGE``), the truth ratio is OU's ``forget_truth_ratio``
aggregate (:func:`truth_ratio_aggregate`), not a plain mean of the per-row ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..core.atomic import atomic_path, write_json_atomic, write_text_atomic
from .jobs import OUJob, run_jobs

logger = logging.getLogger(__name__)

BLOCK_ROWS = 40  # forget01 = 2 authors x 20 questions
FORGET10_ROWS = 400
ASU_TRAINERS = ("ASU_GD", "ASU_KL", "ASU_IDK")


class ContinualError(ValueError):
    pass


def block_slice(first_block: int, last_block: int, rows: int = BLOCK_ROWS) -> str:
    """Rows of forget10 holding blocks first..last (1-based; block 1 = the last ``rows`` rows)."""
    return f"train[{FORGET10_ROWS - rows * last_block}:{FORGET10_ROWS - rows * (first_block - 1)}]"


class ContinualPlan:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work).expanduser().resolve()
        self.original = Path(args.model).expanduser().resolve()

    def model_after(self, step: int) -> Path:
        return self.original if step == 0 else self.work / "runs" / f"step_{step}"

    def _model(self, path: Path) -> list[str]:
        return [f"model.model_args.pretrained_model_name_or_path={path}",
                f"model.tokenizer_args.pretrained_model_name_or_path={path}"]

    def unlearn(self, step: int) -> OUJob:
        a = self.args
        teacher = str(self.original) if a.teacher == "original" else "null"
        return OUJob(f"unlearn_step_{step}", "train", [
            f"experiment={a.experiment}", f"trainer={a.method}", *self._model(self.model_after(step - 1)),
            "forget_split=forget10",
            f"data.forget.{a.forget_key}.args.hf_args.split='{block_slice(step, step, a.block_rows)}'",
            f"retain_split={a.retain_split}", f"trainer.method_args.teacher_path={teacher}",
            *a.override, f"task_name=continual_step_{step}",
        ], self.model_after(step), config_name="unlearn.yaml", meta={"kind": "unlearn", "step": step})

    def evaluate(self, step: int) -> OUJob:
        a = self.args
        blocks = block_slice(1, max(step, 1), a.block_rows)
        return OUJob(f"eval_step_{step}", "eval", [
            f"experiment={a.eval_experiment}", *self._model(self.model_after(step)),
            "forget_split=forget10", "holdout_split=holdout10", f"asu_eval_split='{blocks}'",
            f"asu_eval_utility_split='{a.utility_split}'", f"asu_eval_max_new_tokens={a.max_new_tokens}",
            f"retain_logs_path={a.retain_log or 'null'}", *a.eval_override, f"task_name=continual_eval_{step}",
        ], self.work / "evals" / f"step_{step}", meta={"kind": "eval", "step": step})

    def jobs(self) -> list[OUJob]:
        jobs = [self.evaluate(0)]
        for step in range(1, self.args.steps + 1):
            jobs += [self.unlearn(step), self.evaluate(step)]
        return jobs


def truth_ratio_aggregate(scores) -> Optional[float]:
    """OU's ``forget_truth_ratio`` of some rows from their per-row ratios ``r = P(perturbed) / P(paraphrased)``
    (``value_by_index[i]["score"]``): the mean of ``min(r, 1 / r)``, so 1 = the model cannot tell
    the true answer from the false ones (forgotten), near 0 = it prefers one by far.

    This is the aggregator OU names for this metric (``aggregator: closer_to_1_better`` in
    configs/eval/tofu_metrics/forget_Truth_Ratio.yaml; ``truth_ratio`` in
    src/evals/metrics/memorization.py, OU d3d7cf9), with its 1e-10 guard. A plain mean of ``r`` is
    not the metric: a row whose false answers are 4x as likely as the true one (r = 4) would add
    4 to it, where OU counts 0.25 (as far from "cannot tell" as r = 0.25). None values (rows OU
    could not score) are left out, as OU does."""
    values = [float(v) for v in scores if v is not None]
    if not values:
        return None
    return sum(min(v, 1.0 / (v + 1e-10)) for v in values) / len(values)


def block_figures(data: dict, shown: int, step: int, size: int) -> dict[str, dict]:
    """Per block 1..``shown`` of one TOFU_EVAL.json: its forget10 rows, forget ROUGE-L recall (mean),
    OU's truth-ratio aggregate and the per-row truth ratios, and whether step ``step`` has
    forgotten it. The evaluated slice runs from block ``shown`` (its first ``size`` indices) up
    to block 1 (the last)."""
    rouge = data["forget_Q_A_ROUGE"]["value_by_index"]
    truth = data["forget_truth_ratio"]["value_by_index"]
    blocks = {}
    for block in range(1, shown + 1):
        first = (shown - block) * size
        keys = [str(i) for i in range(first, first + size)]
        ratios = {k: truth[k]["score"] for k in keys if k in truth}
        blocks[str(block)] = {
            "rows_of_forget10": block_slice(block, block, size),
            "forget_Q_A_ROUGE": _mean(rouge[k]["rougeL_recall"] for k in keys if k in rouge),
            "forget_truth_ratio": truth_ratio_aggregate(ratios.values()),
            "forget_truth_ratio_by_index": ratios,
            "forgotten": block <= step,
        }
    return blocks


def step_result(plan: ContinualPlan, step: int) -> dict:
    """Figures of one step from OU's TOFU_EVAL.json, split per forgotten block."""
    data = json.loads((plan.work / "evals" / f"step_{step}" / "TOFU_EVAL.json").read_text())
    shown = max(step, 1)  # step 0 (the original) is scored on block 1
    return {
        "step": step, "teacher": plan.args.teacher, "method": plan.args.method,
        "model": str(plan.model_after(step)),
        "model_utility": data["model_utility"]["agg_value"],
        "forget_quality": (data.get("forget_quality") or {}).get("agg_value"),
        "forget_truth_ratio": data["forget_truth_ratio"]["agg_value"],
        "forget_Q_A_ROUGE": data["forget_Q_A_ROUGE"]["agg_value"],
        "blocks": block_figures(data, shown, step, plan.args.block_rows),
    }


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plot_curves(results: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [r["model_utility"] for r in results], marker="o", label="model_utility")
    left.set_xlabel("step (blocks forgotten)")
    left.set_ylabel("model_utility")
    left.set_xticks(steps)
    for block in sorted({b for r in results for b in r["blocks"]}, key=int):
        xs = [r["step"] for r in results if block in r["blocks"]]
        right.plot(xs, [r["blocks"][block]["forget_Q_A_ROUGE"] for r in results if block in r["blocks"]],
                   marker="o", label=f"block {block}")
    right.set_xlabel("step")
    right.set_ylabel("forget ROUGE-L recall")
    right.set_xticks(steps)
    right.legend()
    fig.suptitle(f"continual unlearning, {results[-1]['method']}, teacher={results[-1]['teacher']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def render_markdown(args: argparse.Namespace, results: Sequence[dict]) -> str:
    """One row per step: utility, then forget ROUGE-L recall / truth ratio of every block."""
    blocks = sorted({b for r in results for b in r["blocks"]}, key=int)
    lines = [f"# Continual unlearning: {args.method}, teacher={args.teacher}", "",
             f"- original model: `{args.model}`; {args.steps} steps of {args.block_rows} forget10 rows each "
             "(block 1 = forget01, the last rows); evaluation: OU's TOFU evaluator, model_utility sets on "
             f"`{args.utility_split}`, {args.max_new_tokens} new tokens",
             "- per block: forget ROUGE-L recall / truth ratio (OU's forget_truth_ratio of the block's rows: mean of "
             "min(r, 1/r), r = P(perturbed) / P(paraphrased) answer; 1 = true and false answers alike); a block is "
             "forgotten from its own step on (*)", "",
             "| step | model_utility | forget_quality | " + " | ".join(f"block {b}" for b in blocks) + " |",
             "|---" * (3 + len(blocks)) + "|"]
    for r in results:
        cells = [_block_cell(r["blocks"].get(b)) for b in blocks]
        fq = "n/a" if r["forget_quality"] is None else f"{r['forget_quality']:.3g}"
        lines.append(f"| {r['step']} | {r['model_utility']:.4f} | {fq} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "![curves](continual.png)", ""])


def _block_cell(block: Optional[dict]) -> str:
    if block is None:
        return "-"
    mark = " *" if block["forgotten"] else ""
    return f"{block['forget_Q_A_ROUGE']:.3f} / {block['forget_truth_ratio']:.3f}{mark}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asu_plugin.openunlearning.continual", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the original model directory (step 0)")
    p.add_argument("--teacher", required=True, choices=["original", "previous"],
                   help="ASU's frozen model at each step: the original model or the step's starting model")
    p.add_argument("--steps", type=int, default=3, help="blocks to forget (default 3)")
    p.add_argument("--block-rows", type=int, default=BLOCK_ROWS,
                   help=f"questions per block (default {BLOCK_ROWS} = forget01's 2 authors)")
    p.add_argument("--method", default="ASU_KL", help="trainer (default ASU_KL)")
    p.add_argument("--work", default="saves/continual", help="where models, evals and step JSONs go")
    p.add_argument("--ou-dir", default=None,
                   help="OU checkout (default $OU_DIR or ~/.cache/asu-plugin/open-unlearning)")
    p.add_argument("--experiment", default="unlearn/tofu/asu_cpu", help="unlearning experiment config")
    p.add_argument("--forget-key", default="TOFU_QA_forget", help="the experiment's forget dataset key")
    p.add_argument("--retain-split", default="retain90", help="TOFU retain config for training (default retain90)")
    p.add_argument("--eval-experiment", default="eval/tofu/asu_cpu")
    p.add_argument("--utility-split", default="train[:8]", help="rows of the model_utility sets (train = all)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answers generated for ROUGE")
    p.add_argument("--retain-log", default=None, help="a matching retain model's TOFU_EVAL.json (forget_quality)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for every unlearning run")
    p.add_argument("--eval-override", action="append", default=[], help="extra Hydra override for every evaluation")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.block_rows < 1 or args.steps < 1 or args.steps * args.block_rows > FORGET10_ROWS:
        raise ContinualError(
            f"--steps {args.steps} x --block-rows {args.block_rows} must be between 1 and {FORGET10_ROWS} rows "
            "(the blocks are cut from forget10)")
    if args.teacher == "original" and args.method not in ASU_TRAINERS:
        raise ContinualError(f"--teacher original sets ASU's teacher_path; {args.method} has none (use previous)")
    if not Path(args.model).expanduser().is_dir():
        raise ContinualError(f"--model {args.model} is not a directory (a saved Hugging Face model)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .environment import ou_dir

    try:
        check_args(args)
    except ContinualError as error:
        raise SystemExit(f"error: {error}") from None
    root = Path(args.ou_dir).expanduser() if args.ou_dir else ou_dir()
    if not (root / "src" / "train.py").is_file():
        raise SystemExit(f"error: OpenUnlearning not found at {root}: set OU_DIR or --ou-dir (make ou)")
    plan = ContinualPlan(args)
    results = []
    jobs = plan.jobs()
    for job in jobs:  # one at a time, so each finished step's JSON appears right away
        run_jobs([job], root, plan.work / "logs", desc=job.name)
        if job.meta["kind"] == "eval":
            result = step_result(plan, job.meta["step"])
            write_json_atomic(plan.work / "steps" / f"step_{job.meta['step']}.json", result)
            rouge = {b: round(v["forget_Q_A_ROUGE"], 3) for b, v in result["blocks"].items()}
            logger.info("step %d: model_utility %.4f, forget ROUGE per block %s", result["step"],
                        result["model_utility"], rouge)
            results.append(result)
    plot_curves(results, plan.work / "continual.png")
    write_json_atomic(plan.work / "continual.json", {"args": vars(args), "steps": results})
    write_text_atomic(plan.work / "continual.md", render_markdown(args, results))
    logger.info("wrote continual.{json,md,png} in %s", plan.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
