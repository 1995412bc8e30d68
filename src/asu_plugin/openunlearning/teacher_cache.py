"""The exact teacher cache: the smoothed teacher's logits on the forget answers, computed once.

The teacher is frozen and the forget set is fixed, so the teacher's distributions on the
forget answer tokens are the same at every step of every epoch. ``teacher_cache`` computes
them once before the first step (smoothing on, in the dtype the teacher's logits have,
answer positions only) and each step reads them back by the forget rows' dataset index
(:mod:`.forget_index`). Exact, not an approximation: every pass numbers each sample's
positions from 0 (:mod:`.positions`), so a sample's logits do not depend on the batch it was
in, whatever the padding side. With ASU_GD (NLL retain term) the frozen model is then needed
only before training and the trainer releases it.

Modes (``trainer.method_args.teacher_cache``):

* ``false``: no cache (the teacher runs every step);
* ``true`` / ``cpu``: in CPU memory, rebuilt by every process start (also on resume);
* ``mmap``: a memory-mapped file under ``<output_dir>/asu_teacher_cache``, reloaded on resume
  when its key still matches (forget set content, teacher weights fingerprint, smoothing,
  dtype, library versions) and rebuilt otherwise — never stale.

Size: answer tokens x vocabulary x bytes per logit (TOFU forget01 on SmolLM2: ~1.5k tokens x
49152 x 4 B ~ 0.3 GB). It is stated (logged) before anything is built; ``cpu`` refuses a cache
above ``teacher_cache_max_gb``, ``mmap`` one larger than the free disk space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from ..core.atomic import write_json_atomic
from ..core.loss import IGNORE_INDEX
from . import resume
from .forget_index import INDEX_KEY, forget_indices

logger = logging.getLogger(__name__)

CACHE_DIR = "asu_teacher_cache"
FORMAT = 1
_OFF = (None, False, "false", "no", "off", "none")
_CPU = (True, "true", "cpu", "memory")


class TeacherCacheTooLarge(ValueError):
    """The cache would not fit the stated budget (memory) or the disk (mmap)."""


def cache_mode(option) -> str | None:
    """``teacher_cache`` option -> None, "cpu" or "mmap"."""
    value = option.lower() if isinstance(option, str) else option
    if value in _OFF:
        return None
    if value in _CPU:
        return "cpu"
    if value == "mmap":
        return "mmap"
    raise ValueError(f"trainer.method_args.teacher_cache must be false, true (= cpu) or mmap, got {option!r}")


def gigabytes(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3f} GB"


def _answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose logits predict an answer token (labels[t + 1] != -100), as token_kl reads them."""
    return (labels[1:] != IGNORE_INDEX).nonzero(as_tuple=True)[0]


def _forget_item(item):
    """The part of a forget item the teacher sees: the item itself, or OU's IDK item's ``original``."""
    return item["original"] if isinstance(item, dict) and "original" in item else item


@dataclass
class Layout:
    """Where each forget sample's answer rows lie in the cache, and what the cache holds."""

    spans: dict[int, tuple[int, int]]  # dataset index -> (first row, number of rows)
    rows: int
    vocab: int
    dtype: torch.dtype
    content: str  # sha256 of the forget set's index, input ids and labels

    @property
    def nbytes(self) -> int:
        return self.rows * self.vocab * torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> str:
        return (f"{len(self.spans)} forget samples, {self.rows} answer tokens x {self.vocab} x "
                f"{str(self.dtype).replace('torch.', '')} = {gigabytes(self.nbytes)}")


def plan_layout(forget_dataset, vocab: int, dtype: torch.dtype) -> Layout:
    """Count each forget sample's answer tokens (without running any model). The RNG is left
    as it was: OU's IDK dataset draws an IDK answer per item read."""
    state = resume.rng_state()
    spans, rows, digest = {}, 0, hashlib.sha256()
    try:
        for position in range(len(forget_dataset)):
            item = _forget_item(forget_dataset[position])
            if not isinstance(item, dict) or INDEX_KEY not in item or "labels" not in item:
                raise ValueError(
                    "teacher_cache needs forget items with 'labels' and their dataset 'index' (OU's QA and "
                    f"pretraining datasets have both); got {sorted(item) if isinstance(item, dict) else type(item)}"
                )
            index, labels = int(item[INDEX_KEY]), torch.as_tensor(item["labels"])
            count = int(_answer_positions(labels).numel())
            spans[index] = (rows, count)
            rows += count
            digest.update(str(index).encode())
            digest.update(torch.as_tensor(item["input_ids"]).numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    finally:
        resume.set_rng_state(state)
    return Layout(spans, rows, vocab, dtype, digest.hexdigest())


def check_budget(layout: Layout, mode: str, max_gb: float, directory: str | None) -> None:
    size = layout.describe()
    if mode == "cpu" and layout.nbytes > max_gb * 1e9:
        raise TeacherCacheTooLarge(
            f"teacher_cache: the forget set's teacher logits need {size}, more than teacher_cache_max_gb="
            f"{max_gb:g} GB of CPU memory. Use trainer.method_args.teacher_cache=mmap (a memory-mapped file "
            "under the output dir), teacher_cache=false (the teacher runs every step), or raise "
            "trainer.method_args.teacher_cache_max_gb."
        )
    if mode == "mmap" and directory is not None:
        os.makedirs(directory, exist_ok=True)
        free = shutil.disk_usage(directory).free + _existing_bytes(directory)
        if layout.nbytes > free:
            raise TeacherCacheTooLarge(
                f"teacher_cache=mmap: the forget set's teacher logits need {size}, but only {gigabytes(free)} "
                f"are free at {directory}. Point trainer.args.output_dir at a larger disk, or use "
                "teacher_cache=false (the teacher runs every step)."
            )


def _existing_bytes(directory: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


def logits_format(model) -> tuple[torch.dtype, int]:
    """The dtype and width of the logits ``model`` returns (transformers 4.45 upcasts to float32,
    later versions keep the model's dtype): what the cache must store to be exact. One token, no grad."""
    device = next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False).logits
        return logits.dtype, int(logits.shape[-1])
    finally:
        for module, training in modes:
            module.training = training


@dataclass
class TeacherCache:
    """The cached teacher logits (rows of ``layout``) and how to read a batch's worth."""

    layout: Layout
    storage: torch.Tensor  # (rows, vocab), CPU memory or memory-mapped
    mode: str
    path: str | None
    status: str  # "built" or "reloaded"
    seconds: float = 0.0
    _keep: list = field(default_factory=list, repr=False)  # the np.memmap behind storage

    def logits_for(self, batch: dict) -> torch.Tensor:
        """(B, T, V) teacher logits for a forget batch: the cached rows at each sample's answer
        positions, zeros elsewhere (``token_kl`` reads answer positions only)."""
        labels = batch["labels"]
        indices = forget_indices(batch).tolist()
        out = torch.zeros((*labels.shape, self.layout.vocab), dtype=self.layout.dtype, device=labels.device)
        for row, index in enumerate(indices):
            span = self.layout.spans.get(index)
            positions = _answer_positions(labels[row])
            if span is None or span[1] != positions.numel():
                raise RuntimeError(
                    f"teacher cache: forget sample {index} has {positions.numel()} answer tokens in this batch "
                    f"but {'none cached' if span is None else f'{span[1]} cached'}: the forget set changed after "
                    "the cache was built. Delete the cache (or set teacher_cache=false) and restart."
                )
            start, count = span
            out[row, positions] = self.storage[start : start + count].to(labels.device, non_blocking=True)
        return out

    def summary(self) -> dict:
        return {"mode": self.mode, "status": self.status, "bytes": self.layout.nbytes, "rows": self.layout.rows,
                "samples": len(self.layout.spans), "vocab": self.layout.vocab,
                "dtype": str(self.layout.dtype).replace("torch.", ""), "path": self.path,
                "build_seconds": round(self.seconds, 3)}


def cache_key(layout: Layout, teacher_fingerprint: str | None, settings: dict) -> str:
    """What the cached logits depend on: the forget set, the teacher's weights, the smoothing,
    the dtype and the library versions (another kernel may round differently)."""
    import transformers

    parts = {"format": FORMAT, "forget": layout.content, "teacher": teacher_fingerprint, "vocab": layout.vocab,
             "dtype": str(layout.dtype), "settings": settings, "torch": torch.__version__,
             "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_names(directory: str, rank: int | None) -> tuple[str, str]:
    suffix = "" if rank is None else f".rank{rank}"
    return os.path.join(directory, f"logits{suffix}.bin"), os.path.join(directory, f"meta{suffix}.json")


def _mapped(path: str, layout: Layout, create: bool):
    """A (rows, vocab) tensor of ``layout.dtype`` backed by the file at ``path`` (any torch
    dtype, bf16 included: the file holds raw bytes, viewed as the dtype)."""
    import numpy as np

    itemsize = torch.empty((), dtype=layout.dtype).element_size()
    shape = (max(layout.rows, 1), layout.vocab * itemsize)
    array = np.memmap(path, dtype=np.uint8, mode="w+" if create else "r+", shape=shape)
    return torch.from_numpy(array).view(layout.dtype)[: layout.rows], array


def _reloadable(meta_path: str, data_path: str, key: str, layout: Layout) -> str | None:
    """None when the cache on disk can be reused, else why not."""
    if not os.path.isfile(meta_path):
        return "no complete cache on disk"
    try:
        meta = json.loads(open(meta_path).read())
    except (OSError, ValueError) as error:
        return f"unreadable {meta_path} ({error})"
    if meta.get("key") != key:
        return "the forget set, the teacher or its settings changed since it was built"
    if not os.path.isfile(data_path) or os.path.getsize(data_path) < layout.nbytes:
        return f"{data_path} is missing or truncated"
    return None


def build(layout: Layout, mode: str, key: str, batches, teacher_logits, directory: str | None = None,
          rank: int | None = None) -> TeacherCache:
    """The cache: reloaded from ``directory`` (mmap) when its key matches, else computed by
    ``teacher_logits(batch)`` over ``batches`` (collated forget batches, on the device)."""
    start = time.time()
    if mode == "mmap":
        os.makedirs(directory, exist_ok=True)
        data_path, meta_path = _file_names(directory, rank)
        why = _reloadable(meta_path, data_path, key, layout)
        if why is None:
            storage, array = _mapped(data_path, layout, create=False)
            logger.info("teacher cache reloaded from %s (%s)", data_path, layout.describe())
            return TeacherCache(layout, storage, mode, data_path, "reloaded", time.time() - start, [array])
        logger.info("teacher cache at %s rebuilt: %s", data_path, why)
        with contextlib.suppress(FileNotFoundError):
            os.remove(meta_path)  # the data file is about to change: never leave a meta that vouches for it
        storage, array = _mapped(data_path, layout, create=True)
    else:
        data_path, meta_path, array = None, None, None
        storage = torch.empty((layout.rows, layout.vocab), dtype=layout.dtype)
    logger.info("teacher cache: building %s (%s)", layout.describe(), data_path or "CPU memory")
    filled = 0
    for batch in batches:
        logits = teacher_logits(batch)
        if logits.dtype != layout.dtype or logits.shape[-1] != layout.vocab:
            raise RuntimeError(f"teacher logits are {logits.dtype} x {logits.shape[-1]}, the cache was sized for "
                               f"{layout.dtype} x {layout.vocab}")
        for row, index in enumerate(forget_indices(batch).tolist()):
            first, count = layout.spans[index]
            positions = _answer_positions(batch["labels"][row])
            if positions.numel() != count:
                raise RuntimeError(f"forget sample {index}: {positions.numel()} answer tokens, {count} counted")
            storage[first : first + count] = logits[row, positions].to("cpu")
            filled += count
    if filled != layout.rows:
        raise RuntimeError(f"teacher cache: {filled} of {layout.rows} answer rows computed (forget set changed?)")
    if array is not None:
        array.flush()
        write_json_atomic(meta_path, {"format": FORMAT, "key": key, "rows": layout.rows, "vocab": layout.vocab,
                                      "dtype": str(layout.dtype)})
    cache = TeacherCache(layout, storage, mode, data_path, "built", time.time() - start, [array])
    logger.info("teacher cache built in %.1f s", cache.seconds)
    return cache


def forget_batches(forget_dataset, collator, batch_size: int, prepare):
    """The forget set in dataset order, collated by the trainer's collator and moved to the
    device by ``prepare``; the RNG is restored afterwards (the IDK dataset draws per item)."""
    state = resume.rng_state()
    try:
        items = [_forget_item(forget_dataset[position]) for position in range(len(forget_dataset))]
    finally:
        resume.set_rng_state(state)
    for first in range(0, len(items), batch_size):
        yield prepare(collator(items[first : first + batch_size]))


# ---- the trainer's side: plan in __init__ (fail fast), build in train() --------------------


@dataclass
class Plan:
    """A cache stated and checked, not yet built."""

    mode: str
    layout: Layout
    directory: str | None


def plan(option, max_gb: float, model, train_dataset, output_dir: str | None) -> Plan | None:
    """The cache ``option`` asks for, sized and checked against the budget before any model is
    copied or run on the forget set (None: no cache)."""
    mode = cache_mode(option)
    if mode is None:
        return None
    forget = getattr(train_dataset, "forget", None)
    if forget is None:
        raise ValueError("teacher_cache needs OU's forget/retain data (an unlearn config with a forget set)")
    if mode == "mmap" and not output_dir:
        raise ValueError("teacher_cache=mmap writes under trainer.args.output_dir, which is not set")
    dtype, vocab = logits_format(model)
    layout = plan_layout(forget, vocab, dtype)
    directory = os.path.join(output_dir, CACHE_DIR) if mode == "mmap" else None
    logger.info("teacher cache (%s) will hold %s", mode if mode == "cpu" else f"mmap under {directory}",
                layout.describe())
    check_budget(layout, mode, float(max_gb), directory)
    return Plan(mode, layout, directory)


def build_for(trainer, plan_: Plan, teacher_fingerprint: str | None, settings: dict) -> TeacherCache:
    """Build (or reload) ``trainer``'s cache with its own teacher pass, collator and batch size."""
    args = trainer.args
    batches = forget_batches(trainer.train_dataset.forget, trainer.data_collator,
                             args.per_device_train_batch_size, trainer._prepare_inputs)
    key = cache_key(plan_.layout, teacher_fingerprint, settings)
    rank = args.process_index if args.world_size > 1 else None
    return build(plan_.layout, plan_.mode, key, batches, trainer.teacher_pass, plan_.directory, rank)
