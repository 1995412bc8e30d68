"""A LoRA student for the ASU trainers: the teacher and the reference are its own base model.

ASU's teacher (smoothed) and ASU_KL's retain reference (plain) are the *original* model. A
LoRA student contains the original model unchanged: with its adapters switched off it *is*
the original. So with ``trainer.method_args.lora`` no frozen copy is made at all — the
teacher and reference passes run on the student itself, adapters off, in eval mode (no
dropout) and under ``no_grad`` (:func:`adapters_off`).

Why a trainer option and not a model config (as OU's closed LoRA PR #151 proposed): whether
the adapters-off base may stand in for the frozen copy is the trainer's decision, and the
trainer must also merge the adapters for OU's evaluator; OU's own trainers (GradDiff, NPO)
would deep-copy a LoRA model *with* its adapters as their reference. Which parameters train
is a trainer argument in OU already (RMU's ``trainable_params_regex``).

Saving: Trainer's ``save_model`` writes only the adapter of a PeftModel, which OU's
``src/eval.py`` cannot load. :func:`save_merged_and_adapter` writes the merged full model to
the output directory (OU evaluates it unchanged) and the adapter alone to ``adapter/``.

``peft`` is imported here only, and only when LoRA is asked for (:func:`import_peft`): the
transformers-matrix venvs install this package without its dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
#: our short names -> LoraConfig's
ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
#: LoraConfig fields we pass on; others (DoRA, lora_bias, modules_to_save, ...) change what
#: "merge" means and are refused rather than saved wrongly
ALLOWED = ("r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "layers_pattern",
           "use_rslora", "init_lora_weights")
EXAMPLE = "trainer.method_args.lora='{r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj]}'"


def import_peft():
    """``peft``, with a clear error when it is missing. peft 0.21 on transformers 4.45 reads
    ``torch.distributed.tensor`` without importing it (AttributeError on a bare
    ``get_peft_model``); importing the submodule first makes it an attribute."""
    try:
        import torch.distributed.tensor  # noqa: F401
    except ImportError:  # torch builds without distributed support
        pass
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            "trainer.method_args.lora needs the `peft` package: pip install 'peft>=0.21.2' "
            "(or leave trainer.method_args.lora null for full fine-tuning)"
        ) from error
    return peft


def lora_options(option) -> dict | None:
    """``trainer.method_args.lora`` -> LoraConfig keyword arguments (None: no LoRA).

    Accepts null/false (off), true (peft's defaults: r=8, alpha=8, the architecture's default
    target modules) or a mapping of LoraConfig fields, with ``alpha`` / ``dropout`` as short
    names for ``lora_alpha`` / ``lora_dropout``.
    """
    if option is None or option is False:
        return None
    if option is True:
        return {}
    if not isinstance(option, Mapping) and not hasattr(option, "items"):
        raise ValueError(f"trainer.method_args.lora must be null, true or a mapping, got {option!r}; e.g. {EXAMPLE}")
    options = {}
    for key, value in option.items():
        name = ALIASES.get(key, key)
        if name not in ALLOWED:
            raise ValueError(
                f"trainer.method_args.lora: unknown or unsupported option {key!r}; known: r, alpha, dropout, "
                f"{', '.join(ALLOWED[3:])} (e.g. {EXAMPLE})"
            )
        if name in options:
            raise ValueError(f"trainer.method_args.lora: {key!r} given twice (as {name} and its short name)")
        options[name] = _plain(value)
    return options


def _plain(value):
    """OmegaConf ListConfig -> list (LoraConfig and json want plain values)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return list(value)


def check_not_with_teacher_path(options, teacher_path) -> None:
    if options is not None and teacher_path:
        raise ValueError(
            f"trainer.method_args.lora cannot be combined with teacher_path={teacher_path!r}: with LoRA the "
            "teacher and the reference are the student's own base model with its adapters switched off, so "
            "they cannot be another model. Unlearn that model itself with LoRA (model.model_args."
            "pretrained_model_name_or_path), or drop lora to use teacher_path."
        )


def _linear_names(model: nn.Module) -> list[str]:
    """Full names of the layers LoRA can adapt (Linear / GPT-2's Conv1D), output head excluded."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.append(name)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name in names if output is None or model.get_submodule(name) is not output]


def check_target_modules(model: nn.Module, target_modules) -> None:
    """Raise when a requested target module matches no layer of ``model`` (peft itself raises
    only when *all* of them match nothing, so a typo in one of four names would train silently
    fewer layers). Matching as peft does: a name (list entry) matches a module whose full name
    is it or ends in ``.<name>``; a string is a regular expression matched in full."""
    if target_modules is None or target_modules == "all-linear":
        return
    names = _linear_names(model)
    if isinstance(target_modules, str):
        unmatched = [] if any(re.fullmatch(target_modules, name) for name in names) else [target_modules]
    else:
        unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        available = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(
            f"trainer.method_args.lora.target_modules: {unmatched} match no layer of {type(model).__name__}; "
            f"its adaptable layers are named {available} (or use target_modules: all-linear)"
        )


def wrap(model: nn.Module, options: dict, gradient_checkpointing: bool = False):
    """``model`` with LoRA adapters (a peft ``PeftModel``): only the adapters train.

    With gradient checkpointing (transformers' default is the re-entrant kind), a checkpointed
    layer gets gradients only if its *input* requires them; with frozen embeddings none does
    and the adapters never change (OU issue #178). ``enable_input_require_grads`` makes the
    embedding output require grad, as transformers does for its own PEFT integration.
    """
    peft = import_peft()
    check_target_modules(model, options.get("target_modules"))
    config = peft.LoraConfig(task_type="CAUSAL_LM", **options)
    wrapped = peft.get_peft_model(model, config)
    if gradient_checkpointing:
        wrapped.enable_input_require_grads()
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    logger.info("LoRA student: %d of %d parameters train (%.3f%%); teacher/reference = base with adapters off",
                trainable, total, 100.0 * trainable / max(total, 1))
    return wrapped


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


@contextlib.contextmanager
def adapters_off(peft_model) -> Iterator[nn.Module]:
    """The original model inside the LoRA student: adapters disabled, eval mode (no dropout),
    no_grad; yields the base model (what ``smoothed_attention`` patches). Train / eval modes are
    restored module by module on exit."""
    modes = [(module, module.training) for module in peft_model.modules()]
    peft_model.eval()
    try:
        with torch.no_grad(), peft_model.disable_adapter():
            yield peft_model.get_base_model()
    finally:
        for module, training in modes:
            module.training = training


class _BaseWeights:
    """The base model's own parameters (adapters left out), named as in the original model:
    what ``run_record.weights_fingerprint`` of the original would see."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def named_parameters(self):
        for name, parameter in self.peft_model.get_base_model().named_parameters():
            if ".lora_" not in name:
                yield name.replace(".base_layer.", "."), parameter


def base_weights(peft_model) -> _BaseWeights:
    return _BaseWeights(peft_model)


def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The state dict of the original architecture with every adapter merged in
    (W + scaling * B @ A, in W's dtype, as peft's ``merge`` computes it), without touching the
    model: only the adapted weights are new tensors, the rest are shared."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
            merged[f"{name}.weight"] = (weight.detach() + delta.detach().to(weight.dtype))
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


def save_merged_and_adapter(peft_model, output_dir: str | os.PathLike, tokenizer: Any = None,
                            training_args: Any = None) -> None:
    """Write the merged full model (+ tokenizer) to ``output_dir`` and the adapter alone to
    ``output_dir/adapter``."""
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    adapter_dir = os.path.join(output_dir, ADAPTER_DIR)
    peft_model.save_pretrained(adapter_dir)
    base = peft_model.get_base_model()
    base.save_pretrained(output_dir, state_dict=merged_state_dict(peft_model), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    if training_args is not None:
        torch.save(training_args, os.path.join(output_dir, "training_args.bin"))
    logger.info("LoRA: merged model saved to %s, adapter alone to %s", output_dir, adapter_dir)
