"""Measure the teacher grid on one model: forget01 rows, teacher-forced figures, greedy answers.

Every cell (the plain model, and tau x layer set) is cached in
``<cache>/<model name>-<weights fingerprint>/<cell>.json`` (atomically): a rerun recomputes only
what is missing, and a model added later (the mini-TOFU target) costs only its own cells.

Teacher-forced figures are :func:`asu_plugin.core.teacher_health.teacher_forced_figures` on the
forget01 rows as OU's collator builds them (prompt, answer, end-of-turn tail), with the τ-probe's
word classes (``asu_plugin.tools.probe``). Greedy answers: the first ``n_generate`` questions,
``max_new_tokens`` new tokens, scored by :mod:`asu_plugin.tools.fluency` (the lowest NLL over the
scoring models: the mini-TOFU retain model when it exists, and the base chat model), their
repetition, and OU's ROUGE-L recall of the gold answer (``rouge_score``, stemmed, as OU's evaluator).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from asu_plugin.core.atomic import write_json_atomic
from asu_plugin.core.teacher_choice import LAYER_SETS, TAUS, layer_set
from asu_plugin.core.teacher_health import ForgetRow, greedy_answers, special_token_ids, teacher_forced_figures
from asu_plugin.openunlearning.run_record import weights_fingerprint
from asu_plugin.tools.probe import choose, load_model, load_qa, padding_token_id

logger = logging.getLogger(__name__)

PLAIN = "plain"


def cell_key(tau: Optional[float], name: Optional[str]) -> str:
    return PLAIN if tau is None else f"tau={tau:g}|{name}"


def grid(num_layers: int) -> list[tuple[Optional[float], Optional[str], Optional[tuple]]]:
    """(tau, layer-set name, layer indices) of every cell, the plain model first."""
    cells = [(None, None, None)]
    cells += [(tau, name, layer_set(name, num_layers)) for tau in TAUS for name in LAYER_SETS]
    return cells


def forget_rows(tokenizer, data_file: Path) -> tuple[list[ForgetRow], list[str]]:
    """Every forget01 QA pair as the student is trained on it (``asu-probe --choose``'s rows) and its question."""
    qa = load_qa(data_file)
    return choose.forget_rows(tokenizer, qa), [q["question"] for q in qa]


class ModelGrid:
    """One model's cells, computed on demand and cached."""

    def __init__(self, name: str, model_dir: Path, data_file: Path, cache_root: Path, scorer_dirs: list[Path]):
        self.name, self.model_dir = name, model_dir
        self.model, self.tokenizer = load_model(model_dir)
        self.fingerprint = weights_fingerprint(self.model)
        self.cache = cache_root / f"{name}-{self.fingerprint[:12]}"
        self.rows, self.questions = forget_rows(self.tokenizer, data_file)
        self.special = special_token_ids(self.tokenizer)
        self.pad = padding_token_id(self.tokenizer)
        self.eos = [self.tokenizer.eos_token_id]
        self.scorer_dirs = scorer_dirs
        self._scorers = None
        self.cells = grid(self.model.config.num_hidden_layers)

    def _path(self, key: str, part: str) -> Path:
        return self.cache / f"{part}-{key.replace('|', '-').replace(' ', '_').replace('=', '')}.json"

    def _load(self, key: str, part: str) -> Optional[dict]:
        path = self._path(key, part)
        return json.loads(path.read_text()) if path.is_file() else None

    def teacher_forced(self) -> dict[str, dict]:
        """Teacher-forced figures of every cell; the missing ones in one pass (one plain forward per batch)."""
        results = {k: v for k in (cell_key(t, n) for t, n, _ in self.cells) if (v := self._load(k, "tf"))}
        missing = [(t, n, ids) for t, n, ids in self.cells if cell_key(t, n) not in results]
        if missing:
            logger.info("%s: teacher-forced figures of %d cells on %d rows", self.name, len(missing), len(self.rows))
            start = time.process_time()
            teachers = [(1.0 if t is None else t, None if ids is None else list(ids)) for t, _, ids in missing]
            figures = teacher_forced_figures(self.model, self.rows, teachers, self.special, eot_id=self.eos[0],
                                             pad_id=self.pad)
            cpu = (time.process_time() - start) / len(missing)
            for (t, n, _), fig in zip(missing, figures):
                key = cell_key(t, n)
                results[key] = {**fig, "cpu_s": round(cpu, 2)}
                write_json_atomic(self._path(key, "tf"), results[key])
        return results

    def scorers(self):
        if self._scorers is None:
            self._scorers = [load_model(d) if d != self.model_dir else (self.model, self.tokenizer)
                             for d in self.scorer_dirs]
        return self._scorers

    def generated(self, n: int, max_new_tokens: int) -> dict[str, dict]:
        """Greedy answers of every cell to the first ``n`` questions, scored; cached per cell."""
        from rouge_score import rouge_scorer

        from asu_plugin.core.teacher_health import LOOP_REPETITION
        from asu_plugin.tools.fluency import score_answers, summarise

        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rows = self.rows[:n]
        setting = {"n": len(rows), "max_new_tokens": max_new_tokens, "scorers": [str(d) for d in self.scorer_dirs]}
        results = {}
        for tau, name, ids in self.cells:
            key = cell_key(tau, name)
            cached = self._load(key, "gen")
            if cached and cached.get("setting") == setting:
                results[key] = cached
                continue
            start = time.process_time()
            teacher = None if tau is None else (tau, list(ids))
            answers = greedy_answers(self.model, [r.prompt for r in rows], max_new_tokens, self.eos,
                                     teacher=teacher, pad_id=self.pad)
            texts = [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
            fluency = summarise(score_answers(self.scorers(), self.questions[:n], texts))
            recall = [rouge.score(r.gold_text, t)["rougeL"].recall for r, t in zip(rows, texts)]
            per = fluency["per_answer"]
            results[key] = {
                "setting": setting,
                "answers": texts,
                "empty_rate": sum(not t.strip() for t in texts) / len(texts),
                "loop_rate": sum(p["repetition"] > LOOP_REPETITION for p in per) / len(per),
                "mean_repetition": fluency["mean_repetition"],
                "fluent_rate": fluency["fluent_rate"],
                "median_nll": fluency["median_nll"],
                "rouge_l_recall": sum(recall) / len(recall),
                "cpu_s": round(time.process_time() - start, 2),
            }
            write_json_atomic(self._path(key, "gen"), results[key])
            logger.info("%s %s: empty %.0f%%, loops %.0f%%, fluent %.0f%%, ROUGE-L recall %.2f", self.name, key,
                        100 * results[key]["empty_rate"], 100 * results[key]["loop_rate"],
                        100 * results[key]["fluent_rate"], results[key]["rouge_l_recall"])
        return results


def threads(n: Optional[int]) -> None:
    if n:
        torch.set_num_threads(n)
