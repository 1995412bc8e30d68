"""SGA's normal data: for each forget row, K-1 retain rows that enter its loss.

Two ways to choose them (``trainer.method_args.normal``):

* ``similar`` — the K-1 retain rows nearest to the forget row in cosine similarity of their
  embeddings, found once when the trainer starts (:func:`neighbour_table`). The embedding is the
  mean of the last hidden state over the tokens of ``question + " " + answer`` (TOFU) or the text
  chunk (MUSE), by default of the model being unlearned (nothing can be downloaded here, so no
  sentence-embedding model is assumed), or of another local model with its own tokenizer
  (``embedding: <dir>``). The table (forget index -> retain indices, similarities) is written to
  the run directory and, keyed by everything it depends on, to a cache directory that later runs
  (other learning rates, seeds) read instead of embedding the retain set again.
* ``random`` — K-1 retain rows drawn for each forget row as it is fetched (:func:`random_normal_rows`).

:class:`NormalRowsDataset` puts the chosen rows into each item as ``item["normal"][j]``, so OU's
collator batches them like the forget rows: ``batch["normal"][j]`` holds every forget row's j-th
normal row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.atomic import write_json_atomic

logger = logging.getLogger(__name__)

NORMAL_MODES = ("similar", "random")
TABLE_NAME = "sga_neighbours.json"
TABLE_VERSION = 1  # bump when the embedding or the search changes: old cache entries stop matching


# ---- the texts that are embedded ---------------------------------------------------------


def row_texts(dataset) -> list[str]:
    """The text of each row of an OU dataset, as embedded: TOFU-style QA rows (``QADataset``)
    give ``question + " " + answer``, text chunks (``PretrainingDataset``, MUSE) the chunk."""
    if hasattr(dataset, "chunks"):
        return list(dataset.chunks)
    data, question_key, answer_key = (getattr(dataset, name, None) for name in ("data", "question_key", "answer_key"))
    if data is None or question_key is None or answer_key is None:
        raise TypeError(
            f"SGA's normal=similar cannot read texts from a {type(dataset).__name__}: it embeds OU's QADataset "
            "(question + answer) or PretrainingDataset (text chunks) rows. Use one of those for data.forget / "
            "data.retain, or trainer.method_args.normal=random"
        )
    texts = []
    for question, answer in zip(data[question_key], data[answer_key]):
        answer = answer[0] if isinstance(answer, (list, tuple)) else answer
        texts.append(f"{question} {answer}")
    return texts


def _digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ---- embeddings ----------------------------------------------------------------------------


def check_embedding_dir(path) -> None:
    """``embedding`` must be None or an existing directory (checked before any model is loaded)."""
    if path is not None and not os.path.isdir(str(path)):
        raise FileNotFoundError(
            f"SGA: embedding={path!r} is not a directory: point trainer.method_args.embedding at a local "
            "model (a save_pretrained directory with its tokenizer), or set it to null to embed with the "
            "model being unlearned"
        )


def load_embedding_model(path: str, dtype, device):
    """(encoder, tokenizer) from a local model directory, with errors that name the fix."""
    from transformers import AutoModel, AutoTokenizer

    check_embedding_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, torch_dtype=dtype)
    except Exception as error:
        raise ValueError(
            f"SGA: the embedding model at {path!r} does not load ({type(error).__name__}: {error}). It must be a "
            "Hugging Face model directory with config.json, weights and a tokenizer; or set "
            "trainer.method_args.embedding=null to embed with the model being unlearned"
        ) from error
    return model.to(device), tokenizer


def _encoder(model):
    """The transformer body of a causal LM (its last hidden state, no vocabulary projection)."""
    body = getattr(model, "base_model", None)
    return body if body is not None and body is not model else model


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 512) -> torch.Tensor:
    """(len(texts), hidden) float32: the mean of the last hidden state over each text's tokens.

    Texts are tokenized one by one (no special tokens, truncated to ``max_length``) and batched
    by length, with the padding masked out of attention and of the mean."""
    encoder = _encoder(model)
    was_training = encoder.training
    encoder.eval()
    ids = [tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"] or
           [tokenizer.eos_token_id or 0] for text in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(encoder.parameters()).device
    out = torch.empty(len(ids), encoder.config.hidden_size, dtype=torch.float32)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for k, i in enumerate(rows):
                input_ids[k, :len(ids[i])] = torch.tensor(ids[i])
                mask[k, :len(ids[i])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            out[rows] = ((hidden * weights).sum(1) / weights.sum(1)).cpu()
    finally:
        encoder.train(was_training)
    return out


def nearest(forget: torch.Tensor, retain: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each forget embedding, the ``count`` retain rows of highest cosine similarity
    (indices and similarities, nearest first)."""
    forget = torch.nn.functional.normalize(forget.float(), dim=-1)
    retain = torch.nn.functional.normalize(retain.float(), dim=-1)
    similarities = forget @ retain.T
    top = torch.topk(similarities, count, dim=-1)
    return top.indices, top.values


# ---- the table -------------------------------------------------------------------------------


@dataclass
class NeighbourTable:
    """forget index -> its K-1 nearest retain indices and their cosine similarities."""

    indices: list[list[int]]
    similarities: list[list[float]]
    key: str
    settings: dict
    seconds: dict = field(default_factory=dict)
    source: str = "computed"  # computed | run directory | cache

    def to_json(self) -> dict:
        return {"version": TABLE_VERSION, "key": self.key, "settings": self.settings, "seconds": self.seconds,
                "neighbours": self.indices, "similarities": self.similarities}

    @classmethod
    def read(cls, path: Path, key: str, source: str) -> "NeighbourTable | None":
        """The table stored at ``path`` if it was made with ``key``, else None."""
        try:
            stored = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if stored.get("key") != key:
            return None
        return cls(stored["neighbours"], stored["similarities"], key, stored["settings"], stored["seconds"], source)


def table_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def neighbour_table(forget, retain, count: int, model, tokenizer, *, embedding: str | None = None,
                    batch_size: int = 16, run_dir: str | None = None, cache_dir: str | None = None,
                    write: bool = True) -> NeighbourTable:
    """The ``count`` nearest retain rows of every forget row (OU datasets ``forget`` / ``retain``).

    ``embedding`` None embeds with ``model`` / ``tokenizer`` (the model being unlearned), a path with
    that local model. Reuses a table from ``run_dir`` (a resumed run) or ``cache_dir`` made with the
    same model weights, tokenizer, texts and settings; writes the table to both when ``write``."""
    from .run_record import weights_fingerprint

    started = time.perf_counter()
    if embedding is not None:
        model, tokenizer = load_embedding_model(embedding, next(model.parameters()).dtype,
                                                next(model.parameters()).device)
    forget_texts, retain_texts = row_texts(forget), row_texts(retain)
    max_length = int(getattr(retain, "max_length", None) or 512)
    settings = {
        "version": TABLE_VERSION,
        "count": count,
        "embedding": embedding or "the model being unlearned",
        "model": getattr(model.config, "_name_or_path", None),
        "weights": weights_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype),
        "tokenizer": [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", None), len(tokenizer)],
        "pooling": "mean of the last hidden state over the text's tokens, no special tokens",
        "max_length": max_length,
        "forget_rows": len(forget_texts),
        "forget_texts": _digest(forget_texts),
        "retain_rows": len(retain_texts),
        "retain_texts": _digest(retain_texts),
    }
    key = table_key(settings)
    places = [(Path(run_dir) / TABLE_NAME, "run directory")] if run_dir else []
    places += [(Path(cache_dir).expanduser() / f"{key}.json", "cache")] if cache_dir else []
    for path, source in places:
        table = NeighbourTable.read(path, key, source)
        if table is not None:
            logger.info("SGA: neighbour table from the %s (%s)", source, path)
            break
    else:
        loaded = time.perf_counter()
        forget_embeddings = embed_texts(model, tokenizer, forget_texts, batch_size, max_length)
        embedded_forget = time.perf_counter()
        retain_embeddings = embed_texts(model, tokenizer, retain_texts, batch_size, max_length)
        embedded_retain = time.perf_counter()
        indices, similarities = nearest(forget_embeddings, retain_embeddings, count)
        done = time.perf_counter()
        seconds = {"prepare": loaded - started, "embed_forget": embedded_forget - loaded,
                   "embed_retain": embedded_retain - embedded_forget, "search": done - embedded_retain,
                   "total": done - started}
        table = NeighbourTable(indices.tolist(), similarities.tolist(), key, settings, seconds)
        logger.info("SGA: neighbour table for %d forget x %d retain rows in %.1f s", len(forget_texts),
                    len(retain_texts), seconds["total"])
    if write:
        for path, source in places:
            if source != table.source:
                write_json_atomic(path, table.to_json())
    return table


# ---- the rows of each step -------------------------------------------------------------------


def random_normal_rows(item: dict, retain, count: int, forget_index: int) -> list:
    """``count`` random retain rows for one forget row, drawn as OU draws its retain rows today:
    the row OU's ForgetRetainDataset drew for this item (``item["retain"]``, global torch RNG)
    first, then ``count - 1`` more with the same RNG. ``forget_index`` is unused here: it is for a
    draw as a function of (seed, epoch, forget index), which can replace this one function."""
    del forget_index
    if count == 0:
        return []
    extra = torch.randint(0, len(retain), (count - 1,)).tolist()
    return [item["retain"], *(retain[index] for index in extra)]


class NormalRowsDataset(torch.utils.data.Dataset):
    """OU's ForgetRetainDataset (anchor ``forget``) with each item's K-1 normal rows added as
    ``item["normal"] = {0: row, 1: row, ...}``; OU's own retain row is consumed, not passed on."""

    def __init__(self, dataset, count: int, mode: str, table: NeighbourTable | None = None):
        self.dataset, self.count, self.mode, self.table = dataset, count, mode, table

    def __len__(self):
        return len(self.dataset)

    def normal_rows(self, item: dict, forget_index: int) -> list:
        if self.mode == "similar":
            return [self.dataset.retain[index] for index in self.table.indices[forget_index]]
        return random_normal_rows(item, self.dataset.retain, self.count, forget_index)

    def __getitem__(self, index):
        item = dict(self.dataset[index])  # anchor=forget: index is the forget row's index
        rows = self.normal_rows(item, index)
        item.pop("retain", None)
        if rows:
            item["normal"] = dict(enumerate(rows))
        return item

    def __getattr__(self, name):  # forget / retain / anchor: what OU's code reads off the dataset
        if name in ("dataset", "count", "mode", "table"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
