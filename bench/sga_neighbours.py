#!/usr/bin/env python
"""What SGA's neighbour table (normal=similar) costs at trainer start, on SmolLM2, for TOFU
forget01 / forget05 / forget10 (with retain99 / 95 / 90), measured.

    python bench/sga_neighbours.py                     # all three splits -> bench/results/sga_neighbours.{json,md}
    python bench/sga_neighbours.py --splits forget01   # a subset
    python bench/sga_neighbours.py --model DIR         # another model (default: the embedded SmolLM2)

For each split it calls the trainer's own ``neighbour_table`` (K = 3: two neighbours) on OU's
datasets, exactly as ``trainer=SGA`` does at start without a cache, and times it (wall and CPU
seconds, with its own breakdown: embedding the forget rows, the retain rows, the search); then the
same call again with the table in a cache directory (what every later run with the same model and
data pays). It also counts the tokens MUSE-Books' CPU config would embed (its 256-token chunks) and
states what that would take at the TOFU rate measured here, labelled as an extrapolation.

Run on a quiet machine: the load average at start and end goes into the report, and times on a
shared 2-core box inflate with it (CPU seconds much less than wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from asu_plugin.core.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from asu_plugin.openunlearning.environment import ou_dir  # noqa: E402

DEFAULT_MODEL = os.environ.get("ASU_MODEL_DIR") or "~/.cache/asu-plugin/models/SmolLM2-135M-Instruct"
SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
NEIGHBOURS = 2  # K = 3, trainer/SGA.yaml's default


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def tofu_dataset(name: str, tokenizer, template_args):
    from data.qa import QADataset  # OpenUnlearning's, as TOFU_QA_forget / TOFU_QA_retain build it

    return QADataset(hf_args={"path": "locuslab/TOFU", "name": name, "split": "train"}, template_args=template_args,
                     tokenizer=tokenizer, question_key="question", answer_key="answer", max_length=512)


def token_count(tokenizer, texts, max_length) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=True,
                                              max_length=max_length)["input_ids"])


def measure_split(forget_split, model, tokenizer, template_args) -> dict:
    from asu_plugin.openunlearning.normal_data import neighbour_table, row_texts

    forget = tofu_dataset(forget_split, tokenizer, template_args)
    retain = tofu_dataset(SPLITS[forget_split], tokenizer, template_args)
    tokens = {"forget": token_count(tokenizer, row_texts(forget), 512),
              "retain": token_count(tokenizer, row_texts(retain), 512)}
    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = clock()
        table = neighbour_table(forget, retain, NEIGHBOURS, model, tokenizer, cache_dir=cache)
        wall2, cpu2 = clock()
        cached = neighbour_table(forget, retain, NEIGHBOURS, model, tokenizer, cache_dir=cache)
        wall3, cpu3 = clock()
    assert cached.source == "cache" and cached.indices == table.indices
    return {
        "forget_split": forget_split, "retain_split": SPLITS[forget_split],
        "forget_rows": len(forget), "retain_rows": len(retain), "tokens": tokens,
        "fresh": {"wall_s": wall2 - wall, "cpu_s": cpu2 - cpu, "breakdown_wall_s": table.seconds},
        "cache_hit": {"wall_s": wall3 - wall2, "cpu_s": cpu3 - cpu2},
        "tokens_per_wall_s": (tokens["forget"] + tokens["retain"])
        / (table.seconds["embed_forget"] + table.seconds["embed_retain"]),
    }


def muse_books_tokens(tokenizer) -> dict:
    """Chunks and tokens MUSE-Books' CPU config (256-token chunks) would embed: counted, not run."""
    from data.pretraining import PretrainingDataset  # OpenUnlearning's

    counts = {}
    for split in ("forget", "retain1"):
        dataset = PretrainingDataset(hf_args={"path": "muse-bench/MUSE-Books", "name": "raw", "split": split},
                                     template_args=None, tokenizer=tokenizer, max_length=256)
        counts[split] = {"chunks": len(dataset), "tokens": token_count(tokenizer, list(dataset.chunks), 256)}
    return counts


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# SGA neighbour table: cost at trainer start",
        "",
        f"Written by `bench/sga_neighbours.py` on {meta['date']} ({meta['machine']}, {meta['cpus']} CPUs, torch "
        f"{meta['torch']} with {meta['torch_threads']} threads, transformers {meta['transformers']}); model "
        f"`{meta['model']}` ({meta['parameters'] / 1e6:.1f} M parameters, {meta['dtype']}), K = {NEIGHBOURS + 1} "
        f"({NEIGHBOURS} neighbours per forget row). Load average at start {meta['load_start']}, at end "
        f"{meta['load_end']}: wall seconds on a busy machine are inflated, CPU seconds much less so.",
        "",
        "Fresh: `neighbour_table` as `trainer=SGA normal=similar` runs it at start without a cached table "
        "(embed every forget and retain row: mean-pooled last hidden state, then a cosine top-2). Cache hit: "
        "the same call when `neighbour_cache` holds the table (every later run on the same model and data).",
        "",
        "| forget split | retain split | forget rows | retain rows | tokens embedded | embed forget (s) | "
        "embed retain (s) | search (s) | fresh wall (s) | fresh CPU (s) | tokens / wall s | cache hit wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["splits"]:
        b = row["fresh"]["breakdown_wall_s"]
        lines.append(
            f"| {row['forget_split']} | {row['retain_split']} | {row['forget_rows']} | {row['retain_rows']} | "
            f"{row['tokens']['forget'] + row['tokens']['retain']} | {b['embed_forget']:.1f} | {b['embed_retain']:.1f} | "
            f"{b['search']:.3f} | {row['fresh']['wall_s']:.1f} | {row['fresh']['cpu_s']:.1f} | "
            f"{row['tokens_per_wall_s']:.0f} | {row['cache_hit']['wall_s']:.2f} |")
    muse = report.get("muse_books")
    if muse:
        total = sum(part["tokens"] for part in muse["counts"].values())
        lines += [
            "",
            f"MUSE-Books at the CPU config's 256-token chunks (`experiment=unlearn/muse/sga_cpu`): "
            f"{muse['counts']['forget']['chunks']} forget + {muse['counts']['retain1']['chunks']} retain chunks, "
            f"{total} tokens. Extrapolated (not measured) at the TOFU rate above ({muse['rate_tokens_per_s']:.0f} "
            f"tokens/s, on shorter texts): about {muse['extrapolated_s'] / 60:.0f} min, which is why that CPU config "
            "draws its normal rows at random.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated TOFU forget splits")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--no-muse", action="store_true", help="skip counting MUSE-Books' tokens")
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        parser.error(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
    model_dir = Path(args.model).expanduser()
    if not (model_dir / "config.json").is_file():
        parser.error(f"no model at {model_dir}: run `python -m asu_plugin.tools.models prepare-smollm2` or pass --model")
    out = Path(args.out).resolve()
    os.chdir(ou_dir())  # OU's datasets resolve locuslab/TOFU and muse-bench/... from the checkout's data links
    sys.path.insert(0, str(ou_dir() / "src"))

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    template_args = {"apply_chat_template": True}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__, "model": model_dir.name,
        "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    report = {"meta": meta, "splits": []}
    # a split measured before with the same model and library versions is kept (resumable: each split
    # is written as soon as it is measured, since all three take an hour or more on a busy 2-core CPU)
    previous = read_previous(out / "sga_neighbours.json", meta)
    for split in tqdm(splits, desc="SGA neighbour tables"):
        kept = [row for row in previous.get("splits", []) if row["forget_split"] == split]
        report["splits"].append(kept[0] if kept else measure_split(split, model, tokenizer, template_args))
        if not kept:
            write_report(out, report)
    if not args.no_muse:
        counts = muse_books_tokens(tokenizer)
        rate = max(row["tokens_per_wall_s"] for row in report["splits"])
        report["muse_books"] = {"counts": counts, "rate_tokens_per_s": rate,
                                "extrapolated_s": sum(part["tokens"] for part in counts.values()) / rate}
    print(write_report(out, report))
    return 0


def read_previous(path: Path, meta: dict) -> dict:
    """The report at ``path`` if it was measured with the same model, parameters and versions."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = ("model", "parameters", "torch", "transformers", "torch_threads")
    if any(previous.get("meta", {}).get(key) != meta[key] for key in same):
        return {}
    meta["load_start"] = previous["meta"]["load_start"]  # the report spans every run that measured it
    meta["date"] = previous["meta"]["date"]
    return previous


def write_report(out: Path, report: dict) -> str:
    report["meta"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(out / "sga_neighbours.json", report)
    text = markdown(report)
    write_text_atomic(out / "sga_neighbours.md", text)
    return text


if __name__ == "__main__":
    sys.exit(main())
