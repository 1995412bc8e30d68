"""Runs inside an OpenUnlearning checkout (cwd = OU_DIR) and prints one JSON object.

Used by tests/ou in a subprocess, so OU's top-level packages (``trainer``, ``data``,
``model``, ``evals``) never enter the pytest process. Subcommands:

* ``loss``: builds an ASU trainer exactly as OU's train.py does (our configs composed by
  Hydra, OU's get_model / get_data / load_trainer), then on the first batch: the loss vs an
  recomputation with the core functions (a wiring check), forget KL at tau = 1 and at the configured tau, which object
  the teacher and reference passes ran on, how many model copies exist; then trains one
  step and checks the frozen copy is bitwise unchanged.
* ``after MODEL_DIR``: forget KL (to the smoothed original) and forget-answer NLL of the
  original model and of MODEL_DIR on a fixed slice of the forget set.
* ``compose REQUESTS_JSON``: compose [config_name, overrides] pairs with Hydra's compose API.
* ``registry``: register() / the Hydra plugin, twice and after a module re-execution.
* ``backends MODEL_DIR``: the frozen copy of a flash-attention student (through OU's
  _prepare_ref_model, DeepSpeed stand-in) and the refusal of a student nothing can reach.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "src"))  # OU's src, as `python src/train.py` has it

import torch  # noqa: E402
from overrides import IDK_ON_CPU  # noqa: E402  (tests/ou/overrides.py: this script's directory)




@contextlib.contextmanager
def ou_configs():
    """Hydra initialised on OU's configs (and, through the plugin, ours), as train.py sees them."""
    from hydra import initialize_config_dir

    import trainer  # noqa: F401  (OU's; imported first, as train.py does, so the plugin registers)

    with initialize_config_dir(config_dir=str(Path.cwd() / "configs"), version_base=None):
        yield


def compose(overrides, config_name="unlearn.yaml"):
    from hydra import compose as hydra_compose

    with ou_configs():
        return hydra_compose(config_name=config_name, overrides=overrides)


def probe_compose(requests) -> list:
    """Compose each (config_name, overrides) and return it resolved (or the error text). Hydra is
    initialised once for all of them (initialising it is most of a compose's cost)."""
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    results = []
    with ou_configs():
        for config_name, overrides in requests:
            try:
                cfg = hydra_compose(config_name=config_name,
                                    overrides=[*overrides, "paths.output_dir=/tmp/compose", "paths.work_dir=."])
                results.append(OmegaConf.to_container(cfg, resolve=True))
            except Exception as error:  # reported to the test, which asserts on it
                results.append({"error": f"{type(error).__name__}: {error}"})
    return results


def build(overrides):
    """OU's train.py up to load_trainer, without training."""
    return build_from_config(compose(overrides))


def build_from_config(cfg):
    """OU's train.py up to load_trainer, from a composed config."""
    from data import get_collators, get_data
    from model import get_model
    from trainer import load_trainer
    from trainer.utils import seed_everything

    seed_everything(cfg.trainer.args.seed)
    model, tokenizer = get_model(cfg.model)
    data = get_data(cfg.data, mode="unlearn", tokenizer=tokenizer, template_args=cfg.model.template_args)
    collator = get_collators(cfg.collator, tokenizer=tokenizer)
    trainer, _ = load_trainer(
        trainer_cfg=cfg.trainer,
        model=model,
        train_dataset=data.get("train"),
        eval_dataset=data.get("eval"),
        tokenizer=tokenizer,
        data_collator=collator,
        evaluators=None,
        template_args=cfg.model.template_args,
    )
    return cfg, trainer


def model_path(model_dir) -> list[str]:
    return [f"model.model_args.pretrained_model_name_or_path={model_dir}",
            f"model.tokenizer_args.pretrained_model_name_or_path={model_dir}"]


def fresh_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")


def probe_loss(method: str, model_dir: str, output_dir: str, train: bool = True) -> dict:
    import asu_plugin.openunlearning.trainers.asu as asu_trainers
    from asu_plugin import smoothed_attention, token_kl

    experiment = ["experiment=unlearn/tofu/asu_idk", *IDK_ON_CPU, *model_path(model_dir)] if method == "ASU_IDK" else [
        "experiment=unlearn/tofu/asu_cpu", f"trainer={method}"]
    overrides = [
        *experiment,
        "task_name=probe",
        f"paths.output_dir={output_dir}",
        "trainer.args.per_device_train_batch_size=2",
        "++trainer.args.max_steps=1",
        "trainer.args.logging_steps=1",
        "trainer.args.report_to=none",
    ]
    cfg, trainer = build(overrides)
    model_class = type(trainer.model)
    copies = sum(1 for obj in gc.get_objects() if isinstance(obj, model_class))

    # which module each teacher / reference pass ran on, and whether smoothing was on
    passes, smoothing = [], {"on": False, "models": []}
    original_context = asu_trainers.smoothed_attention

    @contextlib.contextmanager
    def spy_context(model, *args, **kwargs):
        smoothing["models"].append(model)
        with original_context(model, *args, **kwargs) as inner:
            smoothing["on"] = True
            try:
                yield inner
            finally:
                smoothing["on"] = False

    asu_trainers.smoothed_attention = spy_context
    hook = trainer.ref_model.register_forward_pre_hook(lambda module, args: passes.append(smoothing["on"]))

    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    model = trainer.model
    model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
    hook.remove()
    asu_trainers.smoothed_attention = original_context

    # recomputation with the core functions (wiring; their numerics are tested in tests/core): a fresh copy of the original model as teacher / reference
    forget, retain = batch["forget"], batch["retain"]
    original = fresh_model(model_dir).eval()
    tau, gamma, alpha = trainer.tau, trainer.gamma, trainer.alpha

    def logits(m, b):
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits

    def nll(m, b):  # the model's own (Hugging Face) loss
        return m(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item()

    idk_nll = None
    with torch.no_grad():
        if method == "ASU_IDK":
            forget, idk = forget["original"], forget["alternate"]
            labels = forget["labels"].clone()
            for row in range(labels.shape[0]):  # the first answer token of each row is skipped
                answer = (labels[row] != -100).nonzero()
                if len(answer):
                    labels[row, answer[0, 0]] = -100
            idk_nll = nll(model, idk)
        else:
            labels = forget["labels"]
        with smoothed_attention(original, tau):
            teacher = logits(original, forget)
        forget_kl = token_kl(logits(model, forget), teacher, labels).item()
        if method in ("ASU_KL", "ASU_IDK"):
            retain_term = token_kl(logits(model, retain), logits(original, retain), retain["labels"]).item()
        else:
            retain_term = nll(model, retain)
        expected = gamma * (forget_kl + (idk_nll or 0.0)) + alpha * retain_term
        trainer.tau = 1.0
        forget_kl_tau1 = trainer.compute_forget_loss(model, batch["forget"])[2]["forget_kl"].item()
        trainer.tau = tau

    # one optimizer step through Trainer.train(); the frozen copy must not move
    trainer._asu_sums, trainer._asu_count = {}, 0  # forget the probe call in the step logs
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    if train:
        trainer.train()
    reference = trainer.ref_model.state_dict()
    original_state = original.state_dict()
    reference_unchanged = all(torch.equal(reference[k], original_state[k]) for k in original_state)
    student_changed = any(not torch.equal(student_before[k], v) for k, v in model.state_dict().items())
    return {
        "method": method,
        "tau": tau,
        "gamma": gamma,
        "alpha": alpha,
        "loss": loss,
        "expected": expected,
        "forget_kl": forget_kl,
        "idk_nll": idk_nll,
        "retain_term": retain_term,
        "forget_kl_tau1": forget_kl_tau1,
        "passes_smoothed": passes,
        "smoothing_on_ref_model": [m is trainer.ref_model for m in smoothing["models"]],
        "ref_is_student": trainer.ref_model is trainer.model,
        "model_copies": copies,
        "reference_unchanged": reference_unchanged,
        "student_changed": student_changed,
        "trained": train,
        "log_history": trainer.state.log_history,
    }


def probe_after(model_dir: str, trained_dir: str, rows: int = 8, tau: float = 2.3) -> dict:
    """Forget KL to the smoothed original and forget NLL, before vs after unlearning."""
    from asu_plugin import smoothed_attention, token_kl

    cfg = compose(["experiment=unlearn/tofu/asu_cpu", "task_name=probe", "paths.output_dir=/tmp"])
    from data import get_collators, get_datasets
    from model import get_tokenizer

    tokenizer = get_tokenizer(cfg.model.tokenizer_args)
    forget_cfg = cfg.data.forget
    dataset = get_datasets(forget_cfg, tokenizer=tokenizer, template_args=cfg.model.template_args)
    collator = get_collators(cfg.collator, tokenizer=tokenizer)
    batch = collator([dataset[i] for i in range(rows)])
    original, trained = fresh_model(model_dir).eval(), fresh_model(trained_dir).eval()
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    with torch.no_grad():
        with smoothed_attention(original, tau):
            teacher = original(**ids).logits
        out_original = original(**ids, labels=batch["labels"])
        out_trained = trained(**ids, labels=batch["labels"])
    return {
        "rows": rows,
        "forget_kl_original": token_kl(out_original.logits, teacher, batch["labels"]).item(),
        "forget_kl_trained": token_kl(out_trained.logits, teacher, batch["labels"]).item(),
        "forget_nll_original": out_original.loss.item(),
        "forget_nll_trained": out_trained.loss.item(),
    }


def _qualified(cls) -> str | None:
    return None if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def probe_teacher(model_dir: str) -> dict:
    """OU's get_model with model_handler=ASUSmoothedTeacher vs smoothed_attention on a plain load."""
    from model import get_model

    from asu_plugin import smoothed_attention

    cfg = compose(["experiment=eval/tofu/asu_cpu", "task_name=probe", "++model.model_handler=ASUSmoothedTeacher",
                   "+model.model_args.asu_tau=2.3", "+model.model_args.asu_layers='0-5'"], "eval.yaml")
    teacher, tokenizer = get_model(cfg.model)
    plain = fresh_model(model_dir).eval()
    encoded = tokenizer(["The capital of France is", "Basil Mahfouz Al-Kuwaiti was born in"], return_tensors="pt",
                        padding=True)
    ids = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.no_grad():
        got = teacher(**ids).logits
        unsmoothed = plain(**ids).logits
        with smoothed_attention(plain, 2.3, "0-5"):
            expected = plain(**ids).logits
        generated = teacher.generate(**ids, max_new_tokens=6, do_sample=False)
        with smoothed_attention(plain, 2.3, "0-5"):
            expected_generation = plain.generate(**ids, max_new_tokens=6, do_sample=False)
        teacher.asu_unsmooth()
        restored = teacher(**ids).logits
    return {
        "max_diff_to_smoothed": (got - expected).abs().max().item(),
        "max_diff_to_plain": (got - unsmoothed).abs().max().item(),
        "generation_equal": torch.equal(generated, expected_generation),
        "restored_diff_to_plain": (restored - unsmoothed).abs().max().item(),
        "smoothing": teacher.asu_smoothing,
    }


def probe_edge(method: str, model_dir: str) -> dict:
    """compute_loss + backward on batches without answer tokens (retain / forget)."""
    experiment = (["experiment=unlearn/tofu/asu_idk", *IDK_ON_CPU] if method == "ASU_IDK"
                  else ["experiment=unlearn/tofu/asu_cpu", f"trainer={method}"])
    _, trainer = build([*experiment, "task_name=probe", "paths.output_dir=/tmp/asu_probe_edge",
                        "trainer.args.report_to=none", "trainer.args.per_device_train_batch_size=2",
                        f"model.model_args.pretrained_model_name_or_path={model_dir}",
                        f"model.tokenizer_args.pretrained_model_name_or_path={model_dir}"])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    results = {}
    for case in ("retain_without_answers", "forget_all_prompt"):
        crafted = {"forget": dict(batch["forget"]), "retain": dict(batch["retain"])}
        if case == "retain_without_answers":
            crafted["retain"]["labels"] = torch.full_like(batch["retain"]["labels"], -100)
        elif method == "ASU_IDK":
            original = dict(batch["forget"]["original"])
            original["labels"] = torch.full_like(original["labels"], -100)
            crafted["forget"] = {**batch["forget"], "original": original}
        else:
            crafted["forget"]["labels"] = torch.full_like(batch["forget"]["labels"], -100)
        trainer.model.zero_grad(set_to_none=True)
        trainer.model.train()  # a training step: its terms are logged (evaluation batches' are not)
        trainer._asu_sums, trainer._asu_count = {}, 0
        loss = trainer.compute_loss(trainer.model, crafted)
        loss.backward()
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        results[case] = {
            "loss": loss.item(),
            "finite": bool(torch.isfinite(loss).item()),
            "grad_finite": bool(grads) and all(torch.isfinite(g).all().item() for g in grads),
            **{key: float(value) for key, value in trainer._asu_sums.items()},
        }
    return results


def probe_deepspeed(model_dir: str) -> dict:
    """Build an ASU_KL trainer, then rebuild its frozen model with DeepSpeed "on": a stand-in
    is_deepspeed_enabled and a recording _prepare_deepspeed (DeepSpeed itself needs a GPU)."""
    _, trainer = build(["experiment=unlearn/tofu/asu_cpu", "trainer=ASU_KL", "task_name=probe",
                        "paths.output_dir=/tmp/asu_probe_deepspeed", "trainer.args.report_to=none",
                        f"model.model_args.pretrained_model_name_or_path={model_dir}",
                        f"model.tokenizer_args.pretrained_model_name_or_path={model_dir}"])
    calls = []

    def prepare_deepspeed(model):
        calls.append(model)
        return model

    trainer._prepare_deepspeed = prepare_deepspeed
    trainer.is_deepspeed_enabled = True
    frozen = trainer._build_frozen_model(trainer.model)
    student = trainer.model.state_dict()
    return {
        "prepare_deepspeed_calls": len(calls),
        "prepared_is_student": bool(calls) and calls[0] is trainer.model,
        "prepared_equals_student_weights": bool(calls) and all(
            torch.equal(v, student[k]) for k, v in calls[0].state_dict().items()),
        "ref_model_is_prepared": bool(calls) and frozen is calls[0],
    }


def _flash_modules(model) -> None:
    """Swap flash-attention modules (4.45.1's LlamaFlashAttention2, same weights) into a SDPA-built
    Llama, as a flash_attention_2 load builds it (flash-attention itself cannot load on a CPU)."""
    from transformers.models.llama import modeling_llama

    for index, layer in enumerate(model.model.layers):
        flash = modeling_llama.LlamaFlashAttention2(model.config, layer_idx=index)
        flash.load_state_dict(layer.self_attn.state_dict())
        layer.self_attn = flash
    model.config._attn_implementation = "flash_attention_2"


def probe_backends(model_dir: str) -> dict:
    """A flash-attention student: its frozen copy, made through OU's _prepare_ref_model with
    DeepSpeed "on" (stand-in, as probe_deepspeed), runs SDPA; a student on attention nothing
    can reach is refused when OU's load_trainer builds the trainer."""
    from model import get_model
    from trainer import load_trainer

    overrides = ["experiment=unlearn/tofu/asu_cpu", "trainer=ASU_KL", "task_name=probe",
                 "paths.output_dir=/tmp/asu_probe_backends", "trainer.args.report_to=none", *model_path(model_dir)]
    _, trainer = build(overrides)
    _flash_modules(trainer.model)
    calls = []
    trainer._prepare_deepspeed = lambda model: calls.append(model) or model
    trainer.is_deepspeed_enabled = True
    frozen = trainer._build_frozen_model(trainer.model)
    ids = torch.tensor([[5, 17, 29, 41, 53, 65, 77, 89]])
    with torch.no_grad():
        plain = frozen(input_ids=ids).logits
        loaded = fresh_model(model_dir)(input_ids=ids).logits
    result = {
        "prepare_deepspeed_calls": len(calls),
        "frozen_classes": sorted({type(layer.self_attn).__name__ for layer in frozen.model.layers}),
        "frozen_config": frozen.config._attn_implementation,
        "student_classes": sorted({type(layer.self_attn).__name__ for layer in trainer.model.model.layers}),
        "student_config": trainer.model.config._attn_implementation,
        "record": trainer._attention,
        "plain_diff_to_sdpa_load": (plain - loaded).abs().max().item(),
    }

    cfg = compose(overrides)
    model, tokenizer = get_model(cfg.model)
    for layer in model.model.layers:  # a custom kernel: ignores the config, invisible to torch function modes
        base = type(layer.self_attn)
        layer.self_attn.__class__ = type("OpaqueCustomAttention", (base,), {
            "forward": lambda self, *a, _base=base, **k: _opaque_call(_base.forward, self, *a, **k)})
    model.config._attn_implementation = "custom_kernel"
    try:
        load_trainer(trainer_cfg=cfg.trainer, model=model, train_dataset=trainer.train_dataset, eval_dataset=None,
                     tokenizer=tokenizer, data_collator=trainer.data_collator, evaluators=None,
                     template_args=cfg.model.template_args)
        result["refusal"] = None
    except Exception as error:  # reported to the test, which asserts on it
        result["refusal"] = f"{type(error).__name__}: {error}"
    return result


def _opaque_call(forward, *args, **kwargs):
    with torch._C.DisableTorchFunction():
        return forward(*args, **kwargs)


def probe_registry() -> dict:
    import model as ou_model
    import trainer as ou_trainer

    import asu_plugin
    import hydra_plugins.asu_plugin.asu_searchpath as plugin
    from hydra.core.config_search_path import ConfigSearchPath  # noqa: F401
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    before = set(ou_trainer.TRAINER_REGISTRY)
    first = dict(asu_plugin.register())
    second = dict(asu_plugin.register())
    path = ConfigSearchPathImpl()
    plugin.ASUSearchPathPlugin().manipulate_search_path(path)
    plugin = importlib.reload(plugin)  # what Hydra 1.3.0 does on its second plugin scan
    plugin.ASUSearchPathPlugin().manipulate_search_path(path)
    after = dict(ou_trainer.TRAINER_REGISTRY)
    return {
        "added": sorted(set(after) - before),
        "size_first": len(first),
        "size_second": len(second),
        "size_after_reload": len(after),
        "same_class": first["ASU_KL"] is second["ASU_KL"],
        "classes": {k: f"{after[k].__module__}.{after[k].__qualname__}" for k in ("ASU_GD", "ASU_IDK", "ASU_KL")},
        "model_handler": _qualified(ou_model.MODEL_REGISTRY.get("ASUSmoothedTeacher")),
        "search_path": [(e.provider, e.path) for e in path.get_path()],
    }


def main(argv):
    command = argv[0]
    if command == "loss":
        result = probe_loss(argv[1], argv[2], argv[3], train="--no-train" not in argv)
    elif command == "after":
        result = probe_after(argv[1], argv[2])
    elif command == "compose":
        result = probe_compose(json.loads(argv[1]))
    elif command == "edge":
        result = probe_edge(argv[1], argv[2])
    elif command == "deepspeed":
        result = probe_deepspeed(argv[1])
    elif command == "backends":
        result = probe_backends(argv[1])
    elif command == "teacher":
        result = probe_teacher(argv[1])
    elif command == "registry":
        result = probe_registry()
    else:
        raise SystemExit(f"unknown command {command}")
    print("PROBE_JSON " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
