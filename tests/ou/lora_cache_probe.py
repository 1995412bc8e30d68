"""Runs inside an OpenUnlearning checkout (cwd = OU_DIR) and prints one JSON object: checks of
the LoRA student and the teacher cache on trainers built exactly as OU's train.py builds them
(``ou_probe.build``: our configs composed by Hydra, OU's get_model / get_data / load_trainer).

* ``lora TINY OUT``: for ASU_GD, ASU_KL and ASU_IDK with LoRA: the loss vs an independent
  recomputation (the adapters merged by hand into a fresh copy of the original as student, a
  fresh original as teacher / reference), every model pass's mode (adapters, train flag,
  grad, smoothing), the model copies, the merged state dict the save writes.
* ``cache TINY OUT``: cached rows vs the smoothed original run on each sample alone; the frozen
  copy released (ASU_GD); mmap cache reloaded on resume (and the resumed run equal to the
  uninterrupted one), rebuilt when the forget set or the model changed; LoRA + cache.
* ``bad TINY OUT``: the errors of bad LoRA / teacher-cache settings.
* ``all TINY OUT``: the three, in one process.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import sys
from pathlib import Path

from ou_probe import IDK_ON_CPU, build_from_config, compose, fresh_model, model_path  # noqa: E402  (OU's src on sys.path)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
SCALING = 8 / 4  # alpha / r
_composed: dict = {}


def config(method: str, tiny: str, out, rows: int = 8, **settings):
    """The composed config of ``method`` on the tiny model (Hydra composes each experiment once:
    ~2 s a time), with ``settings`` ({"trainer.method_args.lora": ...}, dots spelled __) set."""
    idk = method == "ASU_IDK"
    experiment = {"ASU_IDK": ["experiment=unlearn/tofu/asu_idk", *IDK_ON_CPU],
                  "SGA": ["experiment=unlearn/tofu/sga_cpu"]}.get(method, ["experiment=unlearn/tofu/asu_cpu", "trainer=ASU_GD"])
    if experiment[0] not in _composed:
        _composed[experiment[0]] = compose([*experiment, *model_path(tiny), "task_name=probe", "paths.output_dir=/unset",
                                            "trainer.args.per_device_train_batch_size=4", "trainer.args.report_to=none",
                                            "trainer.args.logging_steps=1"])
    cfg = copy.deepcopy(_composed[experiment[0]])  # get_model pops from it: a fresh copy per build
    forget = "TOFU_QA_forget_idk" if idk else "TOFU_QA_forget"
    values = {"paths.output_dir": str(out), f"data.forget.{forget}.args.hf_args.split": f"train[:{rows}]"}
    if method == "ASU_KL":
        values.update({"trainer.handler": "ASU_KL", "trainer.method_args.retain_loss_type": "KL"})
    values.update({key.replace("__", "."): value for key, value in settings.items()})
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def model_at(path) -> dict:
    return {"model__model_args__pretrained_model_name_or_path": str(path),
            "model__tokenizer_args__pretrained_model_name_or_path": str(path)}


def copies(cls) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))


def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def expected_loss(method, trainer, student, original, batch) -> float:
    """gamma * forget term + alpha * retain term, from plain models (right padding: no position ids)."""
    from asu_plugin import smoothed_attention, token_kl

    forget, retain = batch["forget"], batch["retain"]
    idk_nll = 0.0
    with torch.no_grad():
        if method == "ASU_IDK":
            forget, idk = forget["original"], forget["alternate"]
            labels = forget["labels"].clone()
            for row in range(labels.shape[0]):
                answer = (labels[row] != -100).nonzero()
                if len(answer):
                    labels[row, answer[0, 0]] = -100
            idk_nll = student(**{k: idk[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item()
        else:
            labels = forget["labels"]
        with smoothed_attention(original, trainer.tau):
            teacher = logits(original, forget)
        forget_kl = token_kl(logits(student, forget), teacher, labels).item()
        if trainer.retain_loss_type == "KL":
            retain_term = token_kl(logits(student, retain), logits(original, retain), retain["labels"]).item()
        else:
            retain_term = student(**{k: retain[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item()
    return trainer.gamma * (forget_kl + idk_nll) + trainer.alpha * retain_term


def merged_by_hand(peft_model, tiny):
    """A fresh original with W + (alpha / r) * B @ A added to every adapted weight."""
    from peft.tuners.lora import LoraLayer

    student = fresh_model(tiny).eval()
    weights = dict(student.named_parameters())
    with torch.no_grad():
        for name, module in peft_model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                weights[f"{name}.weight"].add_(SCALING * b @ a)
    return student


def probe_lora(tiny: str, out: str) -> dict:
    import asu_plugin.openunlearning.trainers.asu as asu_module
    from peft.tuners.lora import LoraLayer

    from asu_plugin.openunlearning.lora import merged_state_dict

    results = {}
    for method in ("ASU_GD", "ASU_KL", "ASU_IDK"):
        _, trainer = build_from_config(config(method, tiny, Path(out) / method, trainer__method_args__lora=LORA))
        peft_model = trainer.model
        base = peft_model.get_base_model()
        model_copies = copies(type(base))
        torch.manual_seed(1)
        with torch.no_grad():  # a student that differs from its base
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.5)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

        peft_model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(peft_model, batch).item()  # also runs smoothing's one-off self-check
        student, original = merged_by_hand(peft_model, tiny), fresh_model(tiny).eval()
        expected = expected_loss(method, trainer, student, original, batch)
        merged = merged_state_dict(peft_model)
        by_hand = student.state_dict()
        merge_diff = max((merged[k] - by_hand[k]).abs().max().item() for k in by_hand)

        # every pass on the model during a training-mode loss: adapters, train flag, grad, smoothing
        layer = next(m for m in base.modules() if isinstance(m, LoraLayer))
        passes, smoothing = [], {"on": False}
        original_context = asu_module.smoothed_attention

        def spy(model, *args, **kwargs):
            import contextlib

            @contextlib.contextmanager
            def context():
                with original_context(model, *args, **kwargs) as inner:
                    smoothing["on"] = True
                    try:
                        yield inner
                    finally:
                        smoothing["on"] = False

            return context()

        asu_module.smoothed_attention = spy
        hook = base.register_forward_pre_hook(lambda module, args: passes.append({
            "adapters_off": bool(layer.disable_adapters), "training": layer.lora_dropout["default"].training,
            "grad": torch.is_grad_enabled(), "smoothed": smoothing["on"]}))
        peft_model.train()
        trainer.compute_loss(peft_model, batch)
        hook.remove()
        asu_module.smoothed_attention = original_context
        results[method] = {
            "loss": loss, "expected": expected, "merge_diff": merge_diff, "model_copies": model_copies,
            "ref_model": trainer.ref_model is not None, "passes": passes,
            "train_mode_restored": all(module.training for module in peft_model.modules()),
            "adapters_on_after": not layer.disable_adapters,
        }
        del trainer, peft_model, base, layer, student, original, batch, hook  # the next count sees its own copies only
    results["SGA"] = probe_sga_lora(tiny, Path(out) / "SGA")
    return results


def probe_sga_lora(tiny: str, out: Path) -> dict:
    """SGA with LoRA (no teacher: only the adapters train): one step, then the final save."""
    from safetensors.torch import load_file

    _, trainer = build_from_config(config(
        "SGA", tiny, out, trainer__method_args__lora=LORA, trainer__method_args__normal="similar",
        trainer__method_args__neighbour_cache=None, trainer__args__max_steps=1,
        data__retain__TOFU_QA_retain__args__hf_args__split="train[:16]"))
    trainer.train()
    trainer.save_model(str(out))  # what OU's train.py does after train()
    peft_model = trainer.model
    original = fresh_model(tiny).state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in peft_model.get_base_model().state_dict().items()
            if ".lora_" not in k}
    saved = load_file(out / "model.safetensors")
    by_hand = merged_by_hand(peft_model, tiny).state_dict()
    return {
        "base_unchanged": all(torch.equal(base[k], original[k]) for k in original),
        "lora_B_all_changed": all(p.abs().max().item() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n),
        "neighbour_table": trainer.table is not None,
        "saved_vs_hand_merge": max((saved[k] - by_hand[k]).abs().max().item() for k in saved),
        "saved_keys_match": sorted(saved) == sorted(k for k in by_hand if k != "lm_head.weight"),
        "adapter_saved": (out / "adapter" / "adapter_model.safetensors").is_file(),
        "record_lora": trainer.run_settings().get("lora"),
    }


def answer_rows(labels) -> torch.Tensor:
    """Positions whose logits predict an answer token (written for this probe)."""
    return torch.tensor([t for t in range(len(labels) - 1) if int(labels[t + 1]) != -100], dtype=torch.long)


def independent_rows(trainer, tiny, tau) -> tuple[int, float]:
    """(answer tokens of the forget set, max |cached - smoothed original on the sample alone|)."""
    from asu_plugin import smoothed_attention

    original = fresh_model(tiny).eval()
    cache = trainer._teacher_cache
    total, diff = 0, 0.0
    forget = trainer.train_dataset.forget
    for position in range(len(forget)):
        item = forget[position]
        item = item.get("original", item)
        rows = answer_rows(item["labels"])
        total += len(rows)
        with torch.no_grad(), smoothed_attention(original, tau):
            alone = original(input_ids=torch.as_tensor(item["input_ids"])[None], use_cache=False).logits[0]
        first, count = cache.layout.spans[int(item["index"])]
        diff = max(diff, (cache.storage[first : first + count].float() - alone[rows].float()).abs().max().item())
    return total, diff


def final_weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def probe_cache(tiny: str, out: str) -> dict:
    out = Path(out)
    results = {}
    # ASU_GD + in-memory cache: built from the smoothed original, frozen copy released
    cached = {"trainer__method_args__teacher_cache": True, "trainer__args__max_steps": 1}
    _, trainer = build_from_config(config("ASU_GD", tiny, out / "gd", **cached))
    cls = type(trainer.model)
    before = copies(cls)
    trainer.train()
    rows, diff = independent_rows(trainer, tiny, trainer.tau)
    results["gd"] = {"copies_before": before, "copies_after": copies(cls), "ref_model": trainer.ref_model is not None,
                     "summary": trainer._teacher_cache.summary(), "independent_rows": rows, "max_diff": diff}
    del trainer

    # ASU_KL + LoRA + cache: the adapters-off base is the teacher; no copy at all
    _, trainer = build_from_config(config("ASU_KL", tiny, out / "kl_lora", trainer__method_args__lora=LORA, **cached))
    trainer.train()
    rows, diff = independent_rows(trainer, tiny, trainer.tau)
    results["kl_lora"] = {"copies": copies(type(trainer.model.get_base_model())), "ref_model": trainer.ref_model is not None,
                          "summary": trainer._teacher_cache.summary(), "independent_rows": rows, "max_diff": diff,
                          "frozen_model": trainer._record_extra["frozen_model"]}
    del trainer

    # mmap: an uninterrupted run, and one resumed from its step-2 checkpoint with the cache copied
    steps = {"trainer__args__max_steps": 4, "trainer__args__save_strategy": "steps", "trainer__args__save_steps": 2,
             "trainer__method_args__teacher_cache": "mmap"}
    _, trainer = build_from_config(config("ASU_GD", tiny, out / "whole", **steps))
    trainer.train()
    whole = final_weights(trainer)
    del trainer
    resumed_dir = out / "resumed"
    shutil.copytree(out / "whole" / "checkpoint-2", resumed_dir / "checkpoint-2")
    shutil.copytree(out / "whole" / "asu_teacher_cache", resumed_dir / "asu_teacher_cache")
    _, trainer = build_from_config(config("ASU_GD", tiny, resumed_dir, trainer__args__resume_from_checkpoint=True,
                                          **steps))
    trainer.train()
    resumed = final_weights(trainer)
    results["resume"] = {"status": trainer._teacher_cache.summary()["status"], "global_step": trainer.state.global_step,
                         "max_diff": max((whole[k] - resumed[k]).abs().max().item() for k in whole)}
    del trainer

    # the same cache dir after the forget set changed, then the model: rebuilt each time
    other = out / "tiny-other"
    model = fresh_model(tiny)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    model.save_pretrained(other)
    for file in Path(tiny).glob("*token*"):
        shutil.copy(file, other / file.name)
    statuses = {}
    mmap_step = {"trainer__method_args__teacher_cache": "mmap", "trainer__args__max_steps": 1}
    for name, model_dir in (("forget_changed", tiny), ("model_changed", other)):
        _, trainer = build_from_config(config("ASU_GD", tiny, resumed_dir, rows=6, **mmap_step, **model_at(model_dir)))
        trainer.train()
        statuses[name] = trainer._teacher_cache.summary()["status"]
        del trainer
    results["statuses"] = statuses
    return results


def probe_bad(tiny: str, out: str) -> dict:
    out = Path(out)
    cases = {
        "target_modules": {"trainer__method_args__lora": {**LORA, "target_modules": ["q_proj", "qkv_proj"]}},
        "teacher_path": {"trainer__method_args__lora": LORA, "trainer__method_args__teacher_path": tiny},
        "budget": {"trainer__method_args__teacher_cache": True, "trainer__method_args__teacher_cache_max_gb": 0.01},
    }
    results = {}
    for name, settings in cases.items():
        run_dir = out / name
        try:
            build_from_config(config("ASU_KL", tiny, run_dir, rows=40, **settings))  # TOFU forget01 whole
            results[name] = {"error": None}
        except Exception as error:  # reported to the test, which asserts on it
            results[name] = {"error": f"{type(error).__name__}: {error}",
                             "failure_marker": (run_dir / "ASU_FAILED.txt").is_file()}
    # the forget set's answer tokens, counted here (independent of the trainer's count)
    from data import get_datasets
    from model import get_tokenizer

    cfg = config("ASU_KL", tiny, out / "count", rows=40)
    tokenizer = get_tokenizer(cfg.model.tokenizer_args)
    forget = get_datasets(cfg.data.forget, tokenizer=tokenizer, template_args=cfg.model.template_args)
    results["budget"]["answer_tokens"] = sum(len(answer_rows(forget[i]["labels"])) for i in range(len(forget)))
    return results


PROBES = {"lora": probe_lora, "cache": probe_cache, "bad": probe_bad}


def main(argv):
    command, tiny, out = argv[0], argv[1], argv[2]
    if command == "all":  # one process (one OU import) for the three
        result = {name: probe(tiny, str(Path(out) / name)) for name, probe in PROBES.items()}
    else:
        result = PROBES[command](tiny, out)
    print("PROBE_JSON " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
