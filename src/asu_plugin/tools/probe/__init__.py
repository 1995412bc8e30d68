"""τ-probe: how attention smoothing hurts factual tokens versus function tokens.

ASU's central observation is that running a model's attention at a temperature tau > 1
damages the prediction of *factual* tokens (names, dates, places: what the model had to
recall) far more than that of *function* tokens (articles, prepositions, punctuation: what
keeps the text fluent). A smoothed model is therefore a teacher that has "forgotten" the
facts but still speaks. This probe measures that, per (tau, layer set), on a QA file, so a
user can pick tau and layers for their own model before training.

One module per job:

* :mod:`.words` — the token classes (factual / function / echo) and the word rule behind them;
* :mod:`.data` — the QA data (TOFU forget01 from the offline mirror by default), the prompt
  and where the answer tokens sit (:func:`build_example`);
* :mod:`.measure` — the model: loading it, per-token answer NLL, greedy generation;
* :mod:`.settings` — the (tau, layer set) grid: parsing and naming settings;
* :mod:`.grid` — the probe run over the grid (:func:`run_probe`, :func:`run_generate`) and
  the metrics of its report;
* :mod:`.recommend` — the rule that picks the setting to train with;
* :mod:`.report` — ``probe.json``, ``probe.png``, ``generations.json`` and the printed lines;
* :mod:`.cli` — ``asu-probe`` / ``python -m asu_plugin.tools.probe``.

Read the numbers with the model in mind: "factual" tokens are facts only for a model that
knows them. Probe the model you will unlearn (e.g. OU's TOFU target model, fine-tuned on
TOFU); a model that never saw the data (the embedded SmolLM2 on TOFU's fictitious authors)
already has a high plain factual NLL, and its greedy answers are guesses.

CLI::

    asu-probe [--model DIR] [--data FILE] [--taus 1.5,2.3,3.0] [--layers "all;0-9;20-29"]
              [--n 20] [--out DIR] [--generate [--prompts "Q1" "Q2"]]
    python -m asu_plugin.tools.probe ...
"""

from .cli import DEFAULT_LAYERS, DEFAULT_TAUS, main
from .data import DEFAULT_SPLIT, Example, build_example, default_data_file, load_qa, prompt_text
from .errors import ProbeError
from .grid import METRICS_DOC, run_generate, run_probe
from .measure import greedy_generate, load_model, padding_token_id, per_token_answer_nll
from .recommend import DEFAULT_MIN_INCREASE, recommend, recommendation_line
from .report import SCHEMA, plot_report, write_generations, write_outputs
from .settings import parse_layer_sets, parse_taus, setting_key
from .words import (
    CLASSES,
    ECHO,
    FACTUAL,
    FACTUAL_MODES,
    FUNCTION,
    STOP_WORDS,
    TOKEN_RULE,
    classify_answer_tokens,
    factual_recall,
    factual_words,
    survives,
)

__all__ = [
    "CLASSES", "DEFAULT_LAYERS", "DEFAULT_MIN_INCREASE", "DEFAULT_SPLIT", "DEFAULT_TAUS", "ECHO", "FACTUAL",
    "FACTUAL_MODES", "FUNCTION", "METRICS_DOC", "SCHEMA", "STOP_WORDS", "TOKEN_RULE", "Example", "ProbeError",
    "build_example", "classify_answer_tokens", "default_data_file", "factual_recall", "factual_words",
    "greedy_generate", "load_model", "load_qa", "main", "padding_token_id", "parse_layer_sets", "parse_taus",
    "per_token_answer_nll", "plot_report", "prompt_text", "recommend", "recommendation_line", "run_generate",
    "run_probe", "setting_key", "survives", "write_generations", "write_outputs",
]
