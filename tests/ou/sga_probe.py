"""Runs inside an OpenUnlearning checkout (cwd = OU_DIR) and prints one JSON object (``PROBE_JSON``):
every check of SGA in one subprocess, so OU's imports (~10 s of CPU) are paid once. It starts by
running OU's real ``src/train.py`` in this process with ``tofu_train`` as its command line (the run
whose model, log and neighbour table the test inspects).

    python sga_probe.py SPEC_JSON

SPEC: tofu_train (a train.py command line), model_dir, other_model_dir (a second local model: the
``embedding`` option), not_a_model_dir, output_dir, cache_dir (where a train.py run left its neighbour table), overrides (shared Hydra
overrides), model_overrides, forget_split / retain_split, compose (a list of [config_name, overrides]
to compose: community/methods/SGA/run.sh), muse_train (a train.py command line).

What it returns, all computed here with code that shares nothing with the trainer's:
* ``loss``: the trainer's loss on its first batch (built as OU's train.py builds it) vs our own
  token-mean NLLs of the same forget rows and of their neighbours' retain rows, collated anew
  with OU's collator from the table in the run directory;
* ``r0``: the trainer's loss at r = 0 vs OU's ``GradAscent.compute_loss`` on the same batch;
* ``neighbours`` / ``neighbours_other_model``: the table vs a brute-force search (raw TOFU rows,
  one text at a time through ``AutoModel``, float64 cosine, full sort);
* ``bad``: the error (type, message, failure marker) for each bad input;
* ``compose``: each composed request, resolved (or its error);
and last it runs OU's real ``src/train.py`` in this process with ``muse_train`` as its command line
(the MUSE CPU experiment; its run directory is checked by the test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "src"))  # OU's src, as `python src/train.py` has it

import torch  # noqa: E402
from ou_probe import compose, probe_compose  # noqa: E402  (tests/ou/ou_probe.py: this script's directory)

IGNORE = -100


def own_nll(model, batch) -> float:
    """Token-mean answer NLL (labels shifted by one), float64, from the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(logp * mask).sum() / mask.sum())


def variant(cfg, overrides):
    """A copy of the composed ``cfg`` with Hydra command-line ``overrides`` applied: values are parsed
    by Hydra's own override parser (``K=2.5`` is a float, ``r=nan`` a float nan), without paying for
    another composition of OU's config tree."""
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=override.is_add())
    return cfg


def build(cfg, model=None, tokenizer=None, data=None, mode="unlearn"):
    """OU's train.py up to load_trainer (model, tokenizer and data reused when given)."""
    from data import get_collators, get_data
    from model import get_model
    from trainer import load_trainer
    from trainer.utils import seed_everything

    seed_everything(cfg.trainer.args.seed)
    if model is None:
        model, tokenizer = get_model(cfg.model)
    if data is None:
        data = get_data(cfg.data, mode=mode, tokenizer=tokenizer, template_args=cfg.model.template_args)
    collator = get_collators(cfg.collator, tokenizer=tokenizer)
    trainer, _ = load_trainer(trainer_cfg=cfg.trainer, model=model, train_dataset=data.get("train"),
                              eval_dataset=data.get("eval"), tokenizer=tokenizer, data_collator=collator,
                              evaluators=None, template_args=cfg.model.template_args)
    return trainer, collator


def probe_loss(spec, base) -> dict:
    out = Path(spec["output_dir"]) / "loss"
    trainer, collator = build(variant(base, [f"paths.output_dir={out}",
                                             f"trainer.method_args.neighbour_cache={spec['cache_dir']}"]))
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    r, K = trainer.r, trainer.K
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        trainer.r = 0.0
        loss_r0 = trainer.compute_loss(model, batch).item()
        from trainer.unlearn.grad_ascent import GradAscent

        grad_ascent = GradAscent.compute_loss(trainer, model, batch).item()
        trainer.r = r

    # which forget rows the batch holds, and their neighbours from the table the run wrote
    dataset = trainer.train_dataset
    forget_rows = {tuple(dataset.forget[i]["input_ids"].tolist()): i for i in range(len(dataset.forget))}
    forget = batch["forget"]
    indices = [forget_rows[tuple(ids[mask.bool()].tolist())]
               for ids, mask in zip(forget["input_ids"], forget["attention_mask"])]
    table = json.loads((out / "sga_neighbours.json").read_text())
    normals = [collator([dataset.retain[table["neighbours"][i][j]] for i in indices]) for j in range(K - 1)]
    with torch.no_grad():
        forget_nll = own_nll(model, forget)
        normal_nlls = [own_nll(model, normal) for normal in normals]
    expected = -((1 - r + r / K) * forget_nll + (r / K) * sum(normal_nlls))
    return {
        "r": r, "K": K, "loss": loss, "expected": expected, "forget_nll": forget_nll, "normal_nlls": normal_nlls,
        "forget_indices": indices, "batch_rows": len(indices),
        "normal_batches_equal": [all(torch.equal(batch["normal"][j][key], normals[j][key]) for key in normals[j])
                                 for j in range(K - 1)],
        "loss_r0": loss_r0, "grad_ascent": grad_ascent, "table_source": trainer.table.source,
    }


def brute_force(table_path: Path, model_dir: str, forget_split: str, retain_split: str) -> dict:
    """The table at ``table_path`` vs every cosine similarity, computed one text at a time."""
    import datasets
    from transformers import AutoModel, AutoTokenizer

    tokenizer, encoder = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()

    def embed(split):
        rows = datasets.load_dataset("locuslab/TOFU", name=split, split="train")
        vectors = []
        with torch.no_grad():
            for question, answer in zip(rows["question"], rows["answer"]):
                ids = tokenizer(f"{question} {answer}", add_special_tokens=False, return_tensors="pt")["input_ids"]
                vectors.append(encoder(input_ids=ids).last_hidden_state[0].double().mean(0))
        vectors = torch.stack(vectors)
        return vectors / vectors.norm(dim=-1, keepdim=True)

    similarities = embed(forget_split) @ embed(retain_split).T
    order = similarities.argsort(dim=-1, descending=True)
    table = json.loads(Path(table_path).read_text())
    got = torch.tensor(table["neighbours"])
    count = got.shape[1]
    best = similarities.gather(1, order[:, :count])
    at_table = similarities.gather(1, got)
    gap = (best[:, -1] - similarities.gather(1, order[:, count:count + 1])[:, 0]).min().item()
    return {
        "rows": got.shape[0], "count": count, "retain_rows": similarities.shape[1],
        "same_indices": float((got == order[:, :count]).all(1).double().mean()),
        "max_similarity_diff": (at_table - best).abs().max().item(),  # the table's rows are the nearest
        "max_stored_similarity_diff": (torch.tensor(table["similarities"]).double() - at_table).abs().max().item(),
        "min_gap_after_last": gap,
        "settings": table["settings"],
    }


BAD = {
    "K_zero": ["trainer.method_args.K=0"],
    "K_not_integer": ["trainer.method_args.K=2.5"],
    "K_text": ["trainer.method_args.K=three"],
    "r_nan": ["trainer.method_args.r=nan"],
    "r_inf": ["trainer.method_args.r=-inf"],
    "r_text": ["trainer.method_args.r=minus_half"],
    "normal_unknown": ["trainer.method_args.normal=nearest"],
    "retain_too_small": ["trainer.method_args.K=402"],  # retain_perturbed: 400 rows
    "embedding_missing": ["trainer.method_args.embedding=/nonexistent/embedder"],
    "embedding_not_a_model": ["trainer.method_args.embedding={not_a_model_dir}"],
    "unknown_option": ["+trainer.method_args.smoothing=0.1"],
}


def probe_bad(spec, base) -> dict:
    from data import get_data
    from model import get_model

    results = {}
    model, tokenizer = get_model(base.model)
    data = get_data(base.data, mode="unlearn", tokenizer=tokenizer, template_args=base.model.template_args)
    cases = {name: [o.format(**spec) for o in overrides] for name, overrides in BAD.items()}
    cases["finetune_config"] = None
    for name, overrides in cases.items():
        out = Path(spec["output_dir"]) / "bad" / name
        try:
            if overrides is None:  # OU's finetune config (train.yaml): no forget / retain data
                cfg = compose(["trainer=SGA", "model=SmolLM2-135M-Instruct", *spec["model_overrides"], "task_name=bad",
                               f"paths.output_dir={out}", "trainer.args.optim=adamw_torch", "trainer.args.bf16=false"],
                              "train.yaml")
                build(cfg, model, tokenizer, mode="train")
            else:
                build(variant(base, [*overrides, f"paths.output_dir={out}"]), model, tokenizer, data)
            results[name] = {"error": None}
        except Exception as error:  # the test asserts on it
            marker = out / "ASU_FAILED.txt"
            results[name] = {"type": type(error).__name__, "error": str(error),
                             "marker": marker.read_text().splitlines()[1] if marker.is_file() else None}
    return results


def run_train_py(argv) -> None:
    """OU's real src/train.py, in this process (its imports are already paid for)."""
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    saved = sys.argv
    sys.argv = ["src/train.py", *argv]
    try:
        runpy.run_path("src/train.py", run_name="__main__")
    finally:
        sys.argv = saved


def main(spec) -> dict:
    import time

    clock = {"start": (time.perf_counter(), time.process_time())}

    def lap(name):
        clock[name] = (time.perf_counter(), time.process_time())

    run_train_py(spec["tofu_train"])  # fills the neighbour cache that the trainers below read
    lap("tofu_train_py")
    base = compose([*spec["overrides"], "paths.output_dir=/tmp/sga_probe_unused"])
    result = {"loss": probe_loss(spec, base)}
    lap("loss")
    table = Path(spec["output_dir"]) / "loss" / "sga_neighbours.json"
    result["neighbours"] = brute_force(table, spec["model_dir"], spec["forget_split"], spec["retain_split"])
    lap("brute_force")
    other = Path(spec["output_dir"]) / "other"
    build(variant(base, [f"paths.output_dir={other}", "trainer.method_args.neighbour_cache=null",
                         "trainer.method_args.K=2", f"trainer.method_args.embedding={spec['other_model_dir']}"]))
    result["neighbours_other_model"] = brute_force(other / "sga_neighbours.json", spec["other_model_dir"],
                                                   spec["forget_split"], spec["retain_split"])
    lap("other_embedding_model")
    result["bad"] = probe_bad(spec, base)
    lap("bad_inputs")
    result["compose"] = probe_compose(spec["compose"])
    lap("compose_run_sh")
    run_train_py(spec["muse_train"])
    lap("muse_train_py")
    names = list(clock)
    result["seconds"] = {b: {"wall": clock[b][0] - clock[a][0], "cpu": clock[b][1] - clock[a][1]}
                         for a, b in zip(names, names[1:])}
    return result


if __name__ == "__main__":
    print("PROBE_JSON " + json.dumps(main(json.loads(sys.argv[1])), default=str))
