"""``make demo``: ASU_KL on SmolLM2 / TOFU forget01 through OU's own scripts, then OU's evaluator.

Runs, in the OU checkout and exactly as a user would type them,

    python src/train.py --config-name=unlearn.yaml experiment=unlearn/tofu/asu_cpu task_name=asu_demo
    python src/eval.py experiment=eval/tofu/asu_cpu task_name=asu_demo_eval model...=saves/unlearn/asu_demo

and prints where TOFU_SUMMARY.json is and its main figures. Offline: the data links and the
embedded model must exist (``make install`` makes both).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .environment import ou_dir as default_ou_dir
from .process import run_in_ou

log = logging.getLogger("asu_plugin.openunlearning.demo")
MAIN_FIGURES = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "privleak")


def _run(step: str, args: list[str], cwd: Path) -> None:
    log.info("%s: python %s", step, " ".join(args))
    done = run_in_ou(args, cwd)
    if done.returncode != 0:
        sys.exit(f"[demo] {step} failed (exit {done.returncode}); see the output above")
    log.info("%s done in %.0f s", step, done.wall_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ou-dir", type=Path, default=default_ou_dir())
    parser.add_argument("--task-name", default="asu_demo")
    parser.add_argument("--epochs", type=float, default=1.0, help="unlearning epochs over forget01 (40 rows)")
    parser.add_argument("--eval-split", default="train[:8]", help="rows of each TOFU split the evaluator reads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s", stream=sys.stdout)
    ou = args.ou_dir.expanduser().resolve()
    if not (ou / "src" / "train.py").is_file():
        sys.exit(f"[demo] OpenUnlearning not found at {ou}: run `make install` or set OU_DIR to your checkout")
    if not (ou / "locuslab" / "TOFU").exists():
        sys.exit(f"[demo] TOFU is not linked into {ou}: run `python -m asu_plugin.openunlearning.data_links link` (or `make install`)")

    model_dir = ou / "saves" / "unlearn" / args.task_name
    _run(
        "unlearning (ASU_KL, tau 2.3, SmolLM2-135M-Instruct, TOFU forget01)",
        [
            "src/train.py", "--config-name=unlearn.yaml", "experiment=unlearn/tofu/asu_cpu",
            f"task_name={args.task_name}", f"trainer.args.num_train_epochs={args.epochs}",
        ],
        ou,
    )
    _run(
        "OU's TOFU evaluation of the unlearned model",
        [
            "src/eval.py", "experiment=eval/tofu/asu_cpu", f"task_name={args.task_name}_eval",
            f"model.model_args.pretrained_model_name_or_path={model_dir}",
            f"model.tokenizer_args.pretrained_model_name_or_path={model_dir}",
            f"asu_eval_split='{args.eval_split}'",  # quoted: Hydra's grammar reads [ ] as a list
        ],
        ou,
    )
    summary_path = ou / "saves" / "eval" / f"{args.task_name}_eval" / "TOFU_SUMMARY.json"
    summary = json.loads(summary_path.read_text())
    log.info("unlearned model: %s", model_dir)
    log.info("TOFU_SUMMARY.json: %s", summary_path)
    for key in MAIN_FIGURES:
        if key in summary:
            log.info("  %-20s %s", key, summary[key])


if __name__ == "__main__":
    main()
