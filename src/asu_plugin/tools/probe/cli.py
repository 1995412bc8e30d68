"""``asu-probe``: the command line of the tau-probe (``python -m asu_plugin.tools.probe`` too).

Probes a model on a QA file over a (tau, layers) grid and writes ``probe.json`` + ``probe.png``
(see :mod:`asu_plugin.tools.probe`), printing one line per setting and the recommendation;
or, with ``--generate``, prints and writes the greedy answers plain and smoothed; or, with
``--choose``, applies the automatic teacher choice (:mod:`.choose`) and writes ``choice.json``
(exit 3 when no candidate passes, with the refusal on stderr). Bad input
(missing data, model or mirror, unparsable lists, a layer index out of range) exits with 2 and
one line on stderr that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...core.errors import SmoothingError
from .data import default_data_file, load_qa
from .errors import ProbeError
from .grid import run_generate, run_probe
from .measure import load_model
from .recommend import DEFAULT_MIN_INCREASE
from .report import format_generations, format_report, write_generations, write_outputs
from .settings import parse_layer_sets, parse_taus
from .words import FACTUAL_MODES, TOKEN_RULE

logger = logging.getLogger(__name__)

DEFAULT_TAUS = "1.5,2.3,3.0"
DEFAULT_LAYERS = "all;0-9;20-29"


def _parser() -> argparse.ArgumentParser:
    from ..models import default_model_dir

    p = argparse.ArgumentParser(
        prog="asu-probe",
        description="ASU tau-probe: per-token NLL of factual vs function answer tokens under attention "
        "smoothing, per (tau, layers); or, with --generate, greedy answers of the smoothed teacher.",
        epilog=f"Token classes. {TOKEN_RULE}",
    )
    p.add_argument(
        "--model",
        default=str(default_model_dir()),
        help="transformers model directory (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="QA JSONL with question/answer fields (default: TOFU forget01 from $ASU_DATA_MIRROR or ../shared/data/hf)",
    )
    p.add_argument("--taus", default=DEFAULT_TAUS, help="comma-separated temperatures (default: %(default)s)")
    p.add_argument(
        "--layers",
        default=DEFAULT_LAYERS,
        help='semicolon-separated layer sets, "all" or index lists like "0-9" / "0,2,4-6" (default: "%(default)s")',
    )
    p.add_argument(
        "--n", type=int, default=20, help="number of questions (first N of the file; default: %(default)s)"
    )
    p.add_argument("--out", default="outputs/asu-probe", help="output directory (default: %(default)s)")
    p.add_argument(
        "--factual",
        choices=FACTUAL_MODES,
        default="novel",
        help="factual tokens: content words absent from the question (novel, default) or all content words",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="greedy answer length; 0 skips generation (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="questions per forward / generate call (default: %(default)s)",
    )
    p.add_argument(
        "--min-increase",
        type=float,
        default=DEFAULT_MIN_INCREASE,
        help="smallest factual NLL increase (nats/token) a recommended setting must cause (default: %(default)s)",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system message (default: none; the chat template's own default applies)",
    )
    p.add_argument(
        "--generate", action="store_true", help="print greedy answers plain and smoothed instead of the probe"
    )
    p.add_argument(
        "--choose", action="store_true",
        help="apply the automatic teacher choice (the rule of trainer.method_args.tau=auto layers=auto, see "
        "asu_plugin.core.teacher_choice) to the first 8 questions; --taus / --layers are not used",
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="with --generate: the prompts (default: 3 questions of --data)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a CPU shared with other jobs use 1 (or set "
        "OMP_WAIT_POLICY=PASSIVE): spinning OpenMP threads made generation >10x slower on a busy 2-core box",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``asu-probe`` and ``python -m asu_plugin.tools.probe``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        taus, layer_sets = parse_taus(args.taus), parse_layer_sets(args.layers)
        if args.n < 1:
            raise ProbeError(f"--n must be >= 1, got {args.n}")
        if args.choose:
            return _choose(args)
        if args.generate and args.prompts:
            rows = [{"question": q, "answer": ""} for q in args.prompts]
        else:
            data = Path(args.data) if args.data else default_data_file()
            rows = load_qa(data, 3 if args.generate else args.n)
        model, tokenizer = load_model(args.model)
        if args.generate:
            results = run_generate(
                model,
                tokenizer,
                [r["question"] for r in rows],
                taus,
                layer_sets,
                system_prompt=args.system_prompt,
                max_new_tokens=args.max_new_tokens if args.max_new_tokens > 0 else 32,
            )
            path = write_generations(results, args.out)
            sys.stdout.write("\n".join([*format_generations(results), f"wrote {path}"]) + "\n")
            return 0
        logger.info(
            "probing %s on %d questions of %s: taus %s, layer sets %s",
            args.model,
            len(rows),
            data,
            taus,
            layer_sets,
        )
        report = run_probe(
            model,
            tokenizer,
            rows,
            taus,
            layer_sets,
            factual=args.factual,
            system_prompt=args.system_prompt,
            max_new_tokens=args.max_new_tokens,
            batch_size=max(1, args.batch_size),
            min_increase=args.min_increase,
            progress=not args.no_progress,
        )
        report["model"], report["data"] = str(args.model), str(data)
        json_path, png_path = write_outputs(report, args.out)
    except (ProbeError, SmoothingError) as exc:
        sys.stderr.write(f"error: {exc}\n")  # the CLI's answer, whatever logging is configured
        return 2
    sys.stdout.write("\n".join(format_report(report)) + "\n")
    sys.stdout.write(f"wrote {json_path} and {png_path} ({report['timing']['seconds']:.1f} s)\n")
    return 0


def _choose(args) -> int:
    from ...core.atomic import write_json_atomic
    from ...core.teacher_choice import DEFAULT_RULE, TeacherChoiceError
    from .choose import CHOICE_JSON, forget_rows, format_choice, run_choose

    data = Path(args.data) if args.data else default_data_file()
    model, tokenizer = load_model(args.model)
    rows = forget_rows(tokenizer, load_qa(data, DEFAULT_RULE.screen_rows), args.system_prompt)
    try:
        record = run_choose(model, tokenizer, rows)
    except TeacherChoiceError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 3
    path = write_json_atomic(Path(args.out) / CHOICE_JSON, {**record, "model": str(args.model), "data": str(data)})
    sys.stdout.write("\n".join([*format_choice(record), f"wrote {path}"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
