"""Tests of the τ-probe (``asu_plugin.tools.probe``): real models and numbers, no mocks.

* the token classifier on hand-made answers with hand-made character spans;
* KV-cached generation under smoothing equals greedy decoding by full forwards (no cache) on
  the growing sequence, smoothed at every step — on a tiny Llama built from a config (peaked
  attention) and on the embedded SmolLM2 for a few tokens;
* the per-token answer NLL of a right-padded batch equals -log softmax of each example run alone;
* ``python -m asu_plugin.tools.probe`` is the CLI;
* the CLI on 3 TOFU questions x 2 taus x 2 layer sets with SmolLM2: JSON + PNG with the
  expected keys and finite values, and the plain NLL equal to a cross-entropy computed here.

SmolLM2 tests skip (with the command that builds it) when the model directory is absent, the
CLI test also when the TOFU mirror is.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from asu_plugin import smoothed_attention
from asu_plugin.tools.probe import (
    ECHO,
    FACTUAL,
    FUNCTION,
    Example,
    ProbeError,
    classify_answer_tokens,
    greedy_generate,
    main,
    parse_layer_sets,
    per_token_answer_nll,
    survives,
)
from tests.smollm2 import needs_model

def _spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Character spans of consecutive ``pieces`` that make up ``text`` (a hand tokenisation)."""
    assert "".join(pieces) == text
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


# --------------------------------------------------------------------------------------------
# token classes


def test_classifier_function_factual_echo():
    question = "Where was Basil Al-Kuwaiti born?"
    pieces = ["Basil", " was", " born", " in", " Kuwait", " City", ",", " in", " 1956", "."]
    answer = "".join(pieces)
    got = classify_answer_tokens(answer, _spans(answer, pieces), question)
    assert got == [ECHO, FUNCTION, ECHO, FUNCTION, FACTUAL, FACTUAL, FUNCTION, FUNCTION, FACTUAL, FUNCTION]
    # without the novelty condition every content-word token is factual
    got = classify_answer_tokens(answer, _spans(answer, pieces), question, factual="content")
    assert got == [
        FACTUAL,
        FUNCTION,
        FACTUAL,
        FUNCTION,
        FACTUAL,
        FACTUAL,
        FUNCTION,
        FUNCTION,
        FACTUAL,
        FUNCTION,
    ]


def test_classifier_subword_pieces_apostrophes_and_hyphens():
    question = "What does Jaime Vasquez's father do?"
    # sub-word pieces take the class of their word; "'s" stays inside its word; a hyphen splits
    pieces = [
        "Jaime",
        " Vas",
        "quez",
        "'s",
        " father",
        " isn",
        "'t",
        " a",
        " chef",
        "-",
        "turned",
        "-",
        "poet",
        ".",
    ]
    answer = "".join(pieces)
    got = classify_answer_tokens(answer, _spans(answer, pieces), question)
    assert got == [
        ECHO,
        ECHO,
        ECHO,
        ECHO,  # Jaime Vasquez's: all in the question
        ECHO,  # father
        FUNCTION,
        FUNCTION,  # isn't is a stop word (both pieces)
        FUNCTION,  # a
        FACTUAL,
        FUNCTION,
        FACTUAL,
        FUNCTION,
        FACTUAL,  # chef - turned - poet
        FUNCTION,  # .
    ]
    # the typographic apostrophe reads as "'"; case does not matter; a token spanning two
    # words is factual if any of them is a novel content word
    answer = "She\u2019s THE Author of Dunes"
    pieces = ["She", "\u2019s", " THE", " Author", " of Dunes"]
    got = classify_answer_tokens(answer, _spans(answer, pieces), "who is the author?")
    assert got == [FUNCTION, FUNCTION, FUNCTION, ECHO, FACTUAL]


def test_classifier_numbers_punctuation_whitespace():
    pieces = [" ", "8", "th", " of", " September", ",", " ", "1", "9", "5", "6", "!"]
    answer = "".join(pieces)
    got = classify_answer_tokens(answer, _spans(answer, pieces), "When was she born? Was it 1956?")
    assert got == [
        FUNCTION,
        FACTUAL,
        FACTUAL,
        FUNCTION,
        FACTUAL,
        FUNCTION,
        FUNCTION,
        ECHO,
        ECHO,
        ECHO,
        ECHO,
        FUNCTION,
    ]


def test_survives_and_layer_sets():
    assert survives("The capital is Paris.", "  the capital  is paris. ")
    assert survives("Paris", "It is Paris, of course")
    assert not survives("The capital is Paris.", "The capital is Lyon.")
    assert parse_layer_sets("all; 0-9 ;0,2,4-6;") == ["all", "0-9", "0,2,4-6"]
    with pytest.raises(ProbeError):
        parse_layer_sets(" ; ")


def _entry(tau, layers, d_factual, d_function):
    """A grid entry as the report holds it; the increase ratio is null when the function NLL did not rise."""
    return {
        "tau": tau,
        "layers": layers,
        "delta_nll": {FACTUAL: d_factual, FUNCTION: d_function, ECHO: 0.0},
        "increase_ratio": d_factual / d_function if d_function > 0 else None,
    }


def test_recommendation_rule():
    from asu_plugin.tools.probe import recommend

    grid = [
        _entry(1.5, "20-29", 0.12, -0.002),  # perfectly selective but too small an effect
        _entry(2.3, "20-29", 0.48, 0.08),  # ratio 6: the most selective real effect
        _entry(2.3, "0-9", 1.5, 0.6),  # ratio 2.5
        _entry(3.0, "all", 4.5, 2.8),  # largest difference, but wrecks function tokens
    ]
    best, qualified = recommend(grid, num_layers=30)
    assert (best["tau"], best["layers"], qualified) == (2.3, "20-29", True)
    # a function increase <= 0 with a real factual effect ranks first
    best, _ = recommend([*grid, _entry(2.0, "25-29", 0.3, -0.01)], num_layers=30)
    assert (best["tau"], best["layers"]) == (2.0, "25-29")
    # equal ratios: the larger factual effect, then smaller tau, then fewer layers
    best, _ = recommend(
        [_entry(3.0, "all", 1.0, 0.5), _entry(2.0, "0-9", 1.0, 0.5), _entry(2.0, "0-3", 1.0, 0.5)], 30
    )
    assert (best["tau"], best["layers"]) == (2.0, "0-3")
    # nothing reaches the minimum: the largest factual increase, flagged
    best, qualified = recommend(grid[:1], num_layers=30)
    assert (best["tau"], qualified) == (1.5, False)


def test_missing_data_file_is_named(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["--data", str(missing), "--no-progress", "-q"]) == 2
    assert str(missing) in capsys.readouterr().err
    monkeypatch.setenv("ASU_DATA_MIRROR", str(tmp_path))
    assert main(["--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "locuslab" / "TOFU" / "forget01.jsonl") in err and "ASU_DATA_MIRROR" in err


# --------------------------------------------------------------------------------------------
# generation with the KV cache == full forwards, smoothed at every step


@torch.no_grad()
def _greedy_full_forwards(
    model, prompt: list[int], steps: int, tau: float, layers, eos: int | None
) -> list[int]:
    """Reference: at each step, a smoothed full forward (no cache) of the whole sequence; argmax."""
    ids = list(prompt)
    new: list[int] = []
    for _ in range(steps):
        with smoothed_attention(model, tau, layers):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        new.append(token)
        ids.append(token)
        if eos is not None and token == eos:
            break
    return new


def _tiny_llama(attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.15,  # large weights: peaked attention, so smoothing changes the argmax
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_generation_matches_full_forwards_tiny(attn):
    model = _tiny_llama(attn)
    torch.manual_seed(1)
    prompts = [torch.randint(3, 96, (n,)).tolist() for n in (5, 9, 14)]
    steps = 12
    changed = False
    for tau, layers in [(3.0, None), (2.0, "1-2")]:
        for prompt in prompts:
            with smoothed_attention(model, tau, layers):
                (cached,) = greedy_generate(model, [prompt], steps, eos_token_id=None)
            reference = _greedy_full_forwards(model, prompt, steps, tau, layers, eos=None)
            assert cached == reference, (tau, layers, prompt)
            plain = _greedy_full_forwards(model, prompt, steps, 1.0, None, eos=None)
            changed |= plain != reference
    assert changed, "smoothing never changed the greedy continuation: the test would not see a missing patch"


def test_per_token_answer_nll_of_a_padded_batch_equals_each_example_alone():
    """Each answer token's NLL in one right-padded batch == -log softmax of that example run alone."""
    model = _tiny_llama("sdpa")
    torch.manual_seed(2)
    examples = []
    for length, answer in ((7, [4, 5, 6]), (12, [8, 9, 10, 11]), (4, [2, 3])):
        ids = torch.randint(3, 96, (length,)).tolist()
        examples.append(Example("q", "a", ids, ids[: answer[0]], answer))
    got = per_token_answer_nll(model, examples, pad_id=0)
    for example, values in zip(examples, got):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        expected = [-float(logp[t - 1, example.input_ids[t]]) for t in example.answer_positions]
        assert values == pytest.approx(expected, abs=1e-5)


def test_python_dash_m_runs_the_cli():
    """``python -m asu_plugin.tools.probe`` is the CLI: its help names the program and states the token rule."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "asu_plugin.tools.probe", "--help"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps the epilog
    assert text.startswith("usage: asu-probe") and "only NLTK English stop words (179, lowercase)" in text


@needs_model
def test_cached_generation_matches_full_forwards_smollm2(smollm2):
    from asu_plugin.tools.probe import prompt_text

    model, tokenizer = smollm2
    prompt = tokenizer(prompt_text(tokenizer, "What is the capital of France?"), add_special_tokens=False)[
        "input_ids"
    ]
    steps, eos = 5, tokenizer.eos_token_id
    for tau, layers in [(2.3, "0-9"), (3.0, None)]:
        with smoothed_attention(model, tau, layers):
            (cached,) = greedy_generate(model, [prompt], steps, eos, pad_id=tokenizer.pad_token_id)
        assert cached == _greedy_full_forwards(model, prompt, steps, tau, layers, eos), (tau, layers)
    (plain,) = greedy_generate(model, [prompt], steps, eos, pad_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(plain) or "capital" in tokenizer.decode(plain)


# --------------------------------------------------------------------------------------------
# the CLI on SmolLM2 and TOFU


def _finite_numbers(value, where="report"):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for key, item in value.items():
            _finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite_numbers(item, f"{where}[{i}]")


@needs_model
def test_probe_cli_on_smollm2(tmp_path, capsys, smollm2):
    from asu_plugin.tools.probe import default_data_file

    try:
        data = default_data_file()
    except ProbeError as exc:
        pytest.skip(f"TOFU mirror absent: {exc}")
    out = tmp_path / "probe"
    rc = main(
        ["--data", str(data), "--n", "3", "--taus", "1,2.3", "--layers", "all;0-9",
         "--max-new-tokens", "4", "--out", str(out), "--no-progress", "-q"]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "recommendation: tau=2.3 layers=" in stdout

    report = json.loads((out / "probe.json").read_text())
    png = (out / "probe.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    for key in ("schema", "token_rule", "metrics", "plain", "grid", "questions", "recommendation",
                "recommendation_line", "timing", "taus", "layer_sets", "factual_mode"):  # fmt: skip
        assert key in report, key
    _finite_numbers(report)
    assert report["n_questions"] == 3 and len(report["questions"]) == 3
    assert [(g["tau"], g["layers"]) for g in report["grid"]] == [
        (1.0, "all"),
        (1.0, "0-9"),
        (2.3, "all"),
        (2.3, "0-9"),
    ]
    for g in report["grid"]:
        for key in (
            "mean_nll",
            "delta_nll",
            "nll_ratio",
            "increase_ratio",
            "excess_increase",
            "survival_rate",
            "factual_recall",
        ):
            assert key in g, key
        if g["tau"] == 1.0:  # tau = 1 is the plain model: no change, same greedy answers
            assert (
                g["delta_nll"][FACTUAL] == 0 and g["delta_nll"][FUNCTION] == 0 and g["survival_rate"] == 1.0
            )
        else:
            assert g["delta_nll"][FACTUAL] > 0 and g["delta_nll"][FUNCTION] > 0
    assert report["plain"]["n_tokens"][FACTUAL] > 0 and report["plain"]["n_tokens"][FUNCTION] > 0
    assert report["recommendation"]["tau"] == 2.3
    q0 = report["questions"][0]
    assert len(q0["tokens"]) == len(q0["classes"]) == len(q0["plain_nll"])
    assert set(q0["smoothed_nll"]) == {
        "tau=1|layers=all",
        "tau=1|layers=0-9",
        "tau=2.3|layers=all",
        "tau=2.3|layers=0-9",
    }

    # plain NLL == cross-entropy of the answer tokens computed here from the chat template
    model, tokenizer = smollm2
    rows = [json.loads(line) for line in data.read_text().splitlines()[:3]]
    for row, q in zip(rows, report["questions"]):
        chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        full = tokenizer.apply_chat_template(chat, tokenize=True)
        prompt = tokenizer.apply_chat_template(chat[:1], tokenize=True, add_generation_prompt=True)
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        assert full[len(prompt) : len(prompt) + len(answer)] == answer
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0]
        ce = torch.nn.functional.cross_entropy(
            logits[len(prompt) - 1 : len(prompt) + len(answer) - 1], torch.tensor(answer), reduction="none"
        )
        assert q["plain_nll"] == pytest.approx(ce.tolist(), abs=1e-4)
        assert q["smoothed_nll"]["tau=1|layers=all"] == pytest.approx(ce.tolist(), abs=1e-4)
        assert "".join(q["tokens"]) == row["answer"]
