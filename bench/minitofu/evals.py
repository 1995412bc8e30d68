"""Reading a finished OU evaluation (TOFU_EVAL.json beside the job's done marker) into the figures
the study reports."""

from __future__ import annotations

import json
from pathlib import Path

from asu_plugin.openunlearning.jobs import DONE

#: OU's aggregate metrics the tables show, as read by :func:`load_summary`
METRICS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "forget_Q_A_Prob", "privleak")


def is_finished(eval_dir: Path) -> bool:
    """Did OU's evaluation in ``eval_dir`` exit 0 (its done marker is written only then)?"""
    return (eval_dir / DONE).is_file()


def load_summary(eval_dir: Path) -> dict | None:
    """OU's aggregates of one evaluation and its generated forget answers; None until it finished."""
    path = eval_dir / "TOFU_EVAL.json"
    if not is_finished(eval_dir) or not path.is_file():
        return None
    data = json.loads(path.read_text())
    rouge = data["forget_Q_A_ROUGE"]
    return {
        "forget_quality": data.get("forget_quality", {}).get("agg_value"),
        "model_utility": data["model_utility"]["agg_value"],
        "forget_truth_ratio": data["forget_truth_ratio"]["agg_value"],
        "forget_Q_A_ROUGE": rouge["agg_value"],
        "forget_Q_A_Prob": data["forget_Q_A_Prob"]["agg_value"],
        "privleak": data.get("privleak", {}).get("agg_value"),
        "generations": {k: {"question": question_of(v["input"]), "generation": v["generation"],
                            "ground_truth": v["ground_truth"]} for k, v in rouge["value_by_index"].items()},
    }


def question_of(prompt: str) -> str:
    """The user turn of OU's decoded prompt (system / user / assistant blocks)."""
    text = prompt.split("\nuser\n", 1)[-1]
    return text.rsplit("\nassistant\n", 1)[0].strip()


def metrics(summary: dict) -> dict:
    """The aggregate figures of a summary (no generations)."""
    return {k: summary[k] for k in METRICS}
