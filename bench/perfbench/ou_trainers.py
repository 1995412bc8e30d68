"""OpenUnlearning as the bench drives it: the import, models, batches, trainers and one step.

Trainers are built the way OU builds them (a ``TrainingArguments``, OU's ``ForgetRetainDataset``
and ``DataCollatorForSupervisedDataset``), by name from ``comparisons.METHODS``. Everything that
touches torch imports it inside the function: the parent process imports this module but must
never run a torch op (no OpenMP pool may exist when it forks).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from asu_plugin.openunlearning.environment import ou_dir

from .comparisons import METHODS
from .config import IGNORE_INDEX

_ASU_TRAINERS = "asu_plugin.openunlearning.trainers"


def import_ou() -> tuple[bool, str]:
    """Put OU's src/ on sys.path and register the ASU trainers; return (ok, reason)."""
    src = ou_dir() / "src"
    if not (src / "trainer" / "__init__.py").is_file():
        return False, f"OpenUnlearning not found at {src.parent} (set OU_DIR)"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    try:
        from asu_plugin.openunlearning.registration import register

        register()
        importlib.import_module(_ASU_TRAINERS)
        from trainer.unlearn.npo import NPO  # noqa: F401
    except Exception as error:  # noqa: BLE001  (reported, sections skipped)
        return False, f"importing OpenUnlearning / {_ASU_TRAINERS} failed: {type(error).__name__}: {error}"
    return True, ""


def quiet_libraries() -> None:
    """No library warnings or progress chatter in the measuring processes' logs."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(Exception):
        import transformers

        transformers.logging.set_verbosity_error()


def load_model(cfg: dict, backend: str = "sdpa"):
    """The configured model in fp32: SmolLM2 from cfg["model_path"], or a tiny Llama from cfg["tiny"]."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if cfg["model"] == "tiny":
        torch.manual_seed(0)
        config = LlamaConfig(**cfg["tiny"], tie_word_embeddings=True)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=backend, torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(Path(cfg["model_path"]).expanduser()), torch_dtype=torch.float32, attn_implementation=backend
        )
    return model.float()


def layers_of(model) -> int:
    return int(model.config.num_hidden_layers)


def vocab_size(model) -> int:
    return int(model.config.vocab_size)


def make_batch(vocab: int, batch: int, seq: int, prompt: int, seed: int = 0, keep_index: bool = False):
    """OU's ForgetRetainDataset of random token rows (labels -100 on the prompt) and one
    batch collated by OU's DataCollatorForSupervisedDataset: {"forget": {...}, "retain": {...}}.
    Rows carry their dataset ``index``, as OU's QA datasets do; with ``keep_index`` the collator
    keeps it in the batch (``DataCollatorForSupervisedDatasetwithIndex``): what a method that
    reads rows by index needs (:func:`reads_index`; OU's NPO would pass it on to the model)."""
    import torch
    from data.collators import DataCollatorForSupervisedDataset
    from data.unlearn import ForgetRetainDataset

    generator = torch.Generator().manual_seed(seed)

    def rows():
        items = []
        for index in range(batch):
            ids = torch.randint(3, vocab, (seq,), generator=generator)  # never the pad id 0
            labels = ids.clone()
            labels[:prompt] = IGNORE_INDEX
            items.append({"input_ids": ids, "labels": labels, "index": index})
        return items

    torch.manual_seed(seed)  # ForgetRetainDataset draws the retain row with torch's RNG
    dataset = ForgetRetainDataset(forget=rows(), retain=rows())
    collator = DataCollatorForSupervisedDataset(tokenizer=SimpleNamespace(pad_token_id=0),
                                                index="index" if keep_index else None)
    return dataset, collator, collator([dataset[i] for i in range(len(dataset))])


def reads_index(name: str) -> bool:
    """Whether method ``name`` reads its forget rows by dataset index (the teacher cache)."""
    return bool(METHODS[name].kwargs.get("teacher_cache"))


def trainer_class(name: str):
    """The class of method ``name`` (comparisons.METHODS), imported now."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)} (perfbench.comparisons.METHODS)")
    module, _, attribute = METHODS[name].trainer.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_trainer(name: str, model, dataset, collator, batch: int, workdir: str):
    """Method ``name`` as OU builds a trainer, with its optimizer created."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=batch, learning_rate=1e-5, report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = trainer_class(name)(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                  **METHODS[name].kwargs)
    trainer.create_optimizer()
    return trainer


def train_step(trainer, batch) -> tuple[float, float]:
    """One optimizer step through the trainer: Trainer.training_step (OU's compute_loss and the
    backward) + optimizer step + zero_grad, as Trainer's loop does. Returns (seconds, loss)."""
    start = time.perf_counter()
    loss = trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss)


def prime_optimizer(trainer) -> None:
    """Allocate AdamW's state with an all-zero gradient (weights unchanged, weight decay 0), so
    the next step runs at steady-state memory without a full warm-up step."""
    import torch

    for parameter in trainer.model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


class PassCounter:
    """Forward hooks on the student / frozen models; a backward pass is a student forward
    whose logits receive a gradient (a tensor hook on them)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.handles = []

    def _add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def attach(self, module, role: str):
        import torch

        def hook(_module, _args, output):
            self._add(f"{role}_forward")
            logits = getattr(output, "logits", None)
            if torch.is_tensor(logits) and logits.requires_grad:
                logits.register_hook(lambda grad: self._add(f"{role}_backward"))

        self.handles.append(module.register_forward_hook(hook))

    def attach_trainer(self, trainer):
        """Student (trainer.model), frozen (trainer.ref_model, when there is one) and, when present,
        teacher_model. A LoRA student's adapters-off passes run on its base model, which its own
        passes also go through: they count as ``base_forward`` (see :meth:`frozen_forwards`)."""
        self.attach(trainer.model, "student")
        if trainer.ref_model is not None:
            self.attach(trainer.ref_model, "frozen")
        if getattr(trainer, "teacher_model", None) is not None:
            self.attach(trainer.teacher_model, "teacher")
        if trainer.ref_model is None and getattr(trainer, "lora", None) is not None:
            self.attach(trainer.model.get_base_model(), "base")

    def result(self) -> dict:
        """The counts, with a LoRA student's adapters-off passes as ``frozen_forward`` (its base
        model's forwards that did not come through the student)."""
        counts = dict(self.counts)
        base = counts.pop("base_forward", None)
        counts.pop("base_backward", None)
        if base is not None:
            counts["frozen_forward"] = base - counts.get("student_forward", 0)
        return counts

    def detach(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def asu_trainers_module():
    """The module that defines the ASU trainers, whose ``token_kl`` global is the one they call."""
    from asu_plugin.openunlearning.trainers import ASU_KL

    return sys.modules[ASU_KL.__module__]


@contextlib.contextmanager
def counting_token_kl():
    """Count calls of the token_kl object the ASU trainers call (and restore it)."""
    import asu_plugin.core.loss as loss_module

    module = asu_trainers_module()
    original = module.token_kl
    calls = {"n": 0, "is_loss_token_kl": original is loss_module.token_kl}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    module.token_kl = counted
    try:
        yield calls
    finally:
        module.token_kl = original


def measured_token_kl():
    """(function, description): the token_kl the ASU trainers call when OU is importable, else
    asu_plugin.core.loss.token_kl itself."""
    import asu_plugin.core.loss as loss_module

    ok, reason = import_ou()
    if not ok:
        return loss_module.token_kl, f"asu_plugin.core.loss.token_kl (trainers not importable: {reason})"
    module = asu_trainers_module()
    same = module.token_kl is loss_module.token_kl
    return module.token_kl, f"{module.__name__}.token_kl (is asu_plugin.core.loss.token_kl: {same})"
