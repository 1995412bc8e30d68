#!/usr/bin/env python
"""The ASU teacher diagnosis (issue 14): why the all-layer teacher at tau 2.3 teaches empty answers
on SmolLM2-135M, and which (tau, layer set) stays fluent while it forgets.

    python bench/teacher.py                 # make bench-teacher: every model that exists
    python bench/teacher.py --models base=DIR   # other models

For the base model (``~/.cache/asu-plugin/models/SmolLM2-135M-Instruct``) and the mini-TOFU target
(``~/.cache/asu-plugin/mini_tofu/models/target``; skipped, and said so, until it exists), over TOFU
forget01 (40 questions): tau in {1.5, 2.0, 2.3, 2.8} x layer sets {all, first half, first third,
first sixth, middle third, last third} and the plain model. Teacher-forced on all 40 rows: special-
token mass at the first answer position and inside the gold answers, KL(teacher || original) and the
NLL increase on factual / function tokens (the τ-probe's word rule). Greedy answers to the first 20
questions (48 new tokens): empty rate, loop rate, fluency (asu_plugin.tools.fluency) and OU's ROUGE-L
recall of the gold answer. Then the automatic choice (``tau=auto layers=auto``) on each model.

Every cell is cached per model weights under ``~/.cache/asu-plugin/teacher_bench`` (a rerun only
computes what is missing); results go to bench/results/teacher.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from asu_plugin.core.teacher_choice import TeacherChoiceError  # noqa: E402
from asu_plugin.tools.probe import default_data_file  # noqa: E402
from teacherbench import report as reporting  # noqa: E402
from teacherbench.measure import ModelGrid, threads  # noqa: E402

logger = logging.getLogger("bench.teacher")
HOME = Path("~/.cache/asu-plugin").expanduser()
MODELS = {"base": HOME / "models" / "SmolLM2-135M-Instruct", "target": HOME / "mini_tofu" / "models" / "target"}
RETAIN = HOME / "mini_tofu" / "models" / "retain"


def _exists(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _choice(grid: ModelGrid) -> dict:
    """The automatic choice on this model (cached by asu_plugin.core.teacher_search itself)."""
    from asu_plugin.tools.probe.choose import run_choose

    try:
        return run_choose(grid.model, grid.tokenizer, grid.rows)
    except TeacherChoiceError as error:
        return {"refused": str(error)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--cache", default=str(HOME / "teacher_bench"))
    p.add_argument("--models", nargs="*", default=None, help="name=DIR pairs (default: base and target)")
    p.add_argument("--generate", type=int, default=20, help="questions answered greedily per cell (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads(args.threads)
    models = dict(m.split("=", 1) for m in args.models) if args.models else dict(MODELS)
    data_file = default_data_file("forget01")
    scorers = [RETAIN] if _exists(RETAIN) else []
    report = {"schema": "asu-teacher-bench/1", "models": {}, "skipped": {}, "n_generate": args.generate,
              "max_new_tokens": args.max_new_tokens, "data": str(data_file),
              "scorers": [str(s) for s in scorers] + ["<base model>"], "cost": {"by_model": {}}}
    previous = Path(args.out) / "teacher.json"
    for name, model_dir in models.items():
        model_dir = Path(model_dir).expanduser()
        if not _exists(model_dir):
            report["skipped"][name] = f"no model at {model_dir} (yet): rerun `make bench-teacher` once it is built"
            logger.warning("skipping %s: %s", name, report["skipped"][name])
            continue
        start = time.process_time()
        grid = ModelGrid(name, model_dir, data_file, Path(args.cache), [*scorers, MODELS["base"]])
        tf = grid.teacher_forced()
        gen = grid.generated(args.generate, args.max_new_tokens)
        choice = _choice(grid)
        cpu = sum(c.get("cpu_s", 0) for c in [*tf.values(), *gen.values()]) + (choice.get("cost_s") or {}).get("total", 0)
        report["models"][name] = {"model_dir": str(model_dir), "fingerprint": grid.fingerprint,
                                  "num_layers": grid.model.config.num_hidden_layers,
                                  "teacher_forced": tf, "generated": gen, "choice": choice, "cpu_s": round(cpu, 1)}
        report["cost"]["by_model"][name] = cpu
        report["rows"] = len(grid.rows)
        logger.info("%s done (%.0f CPU-s measured, this session %.0f CPU-s)", name, cpu, time.process_time() - start)
    report["cost"]["cpu_s"] = sum(report["cost"]["by_model"].values())
    if not report["models"] and previous.is_file():
        logger.error("no model measured; keeping %s", previous)
        return 1
    paths = reporting.write(report, Path(args.out))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
