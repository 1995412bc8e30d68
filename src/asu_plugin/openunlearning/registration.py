"""Put the ASU trainers into OpenUnlearning's trainer registry — without a fork of OU.

OU picks a trainer by looking its ``handler`` name up in ``trainer.TRAINER_REGISTRY``
(``src/trainer/__init__.py``), a plain dict filled at import time. Adding two entries to
that dict is all it takes for ``trainer=ASU_KL`` to work in an unmodified OU checkout.
The Hydra plugin (``hydra_plugins.asu_plugin``) calls :func:`register` at start-up of any
Hydra app that has already imported OU's ``trainer`` package; call it yourself when you
drive OU from Python.

OU is found the way OU's own scripts find it: its ``src/`` directory on ``sys.path``
(``python src/train.py`` puts it there). When it is not, :func:`register` tries
``$OU_DIR/src`` (default ``~/.cache/asu-plugin/open-unlearning``) before giving up with
a message that says how to point at a checkout.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from .environment import DEFAULT_OU_DIR, OU_PINNED_COMMIT, ou_commit, ou_dir

logger = logging.getLogger(__name__)

TRAINER_NAMES = ("ASU_GD", "ASU_KL", "ASU_IDK", "SGA")


class OpenUnlearningNotFound(ImportError):
    """OU's ``src/`` is not importable (no ``trainer`` package on ``sys.path``)."""


_checked_commits: set = set()


def warn_if_other_commit(directory: str | os.PathLike | None = None) -> str | None:
    """Warn when OU is not at the pinned commit (once per directory); return the commit found."""
    key = str(directory)
    commit = ou_commit(directory)
    if key in _checked_commits:
        return commit
    _checked_commits.add(key)
    if commit is not None and not commit.startswith(OU_PINNED_COMMIT):
        warnings.warn(
            f"OpenUnlearning is at commit {commit[:12]}, but asu-plugin is tested against "
            f"{OU_PINNED_COMMIT}; trainer internals (GradDiff, _prepare_ref_model) may differ. "
            f"To match: git -C <OU_DIR> checkout {OU_PINNED_COMMIT}",
            stacklevel=2,
        )
    return commit


def _import_ou_trainer():
    """Import OU's ``trainer`` package, trying ``$OU_DIR/src`` when it is not on the path."""
    try:
        import trainer  # noqa: F401  (OU's package, found through OU's src/ on sys.path)

        return trainer
    except ImportError as first:
        if first.name not in (None, "trainer"):
            raise  # OU was found but one of *its* imports failed: show that error as is
        src = ou_dir() / "src"
        if not (src / "trainer" / "__init__.py").is_file():
            raise OpenUnlearningNotFound(
                "asu_plugin.register() needs OpenUnlearning: its `trainer` package is not "
                f"importable and no checkout was found at {src.parent} (from $OU_DIR, default "
                f"{DEFAULT_OU_DIR}). Either run from the OU checkout (`cd <OU_DIR> && python "
                "src/train.py ...`), add <OU_DIR>/src to PYTHONPATH, or set OU_DIR to a checkout "
                f"(git clone https://github.com/locuslab/open-unlearning <OU_DIR> && git -C "
                f"<OU_DIR> checkout {OU_PINNED_COMMIT})."
            ) from first
        sys.path.insert(0, str(src))
        logger.info("asu_plugin: added %s to sys.path to import OpenUnlearning", src)
        import trainer  # noqa: F811

        return trainer


def _put(registry: dict, name: str, cls, what: str) -> None:
    current = registry.get(name)
    if current is not None and current is not cls:
        # A re-executed asu_plugin module defines a new class object: keep the newest, but
        # refuse to overwrite somebody else's class of the same name.
        if getattr(current, "__module__", None) != cls.__module__:
            raise RuntimeError(
                f"OU's {what} already has a different {name!r} "
                f"({current.__module__}.{current.__qualname__}); not overwriting it."
            )
    registry[name] = cls


def _register_model_handler() -> None:
    """``model_handler: ASUSmoothedTeacher`` for OU's get_model (scores the smoothed teacher)."""
    import model as ou_model  # OU's src/model (on sys.path once OU's trainer imported)

    registry = getattr(ou_model, "MODEL_REGISTRY", None)
    if not isinstance(registry, dict):
        raise RuntimeError(
            f"OpenUnlearning's `model` package ({getattr(ou_model, '__file__', '?')}) has no MODEL_REGISTRY "
            f"dict: its API changed. asu-plugin is written against OU commit {OU_PINNED_COMMIT}."
        )
    from .teacher_model import ASUSmoothedTeacher

    _put(registry, ASUSmoothedTeacher.__name__, ASUSmoothedTeacher, "MODEL_REGISTRY")


def register(trainer_module=None) -> dict:
    """Add ``ASU_GD``, ``ASU_KL``, ``ASU_IDK`` and ``SGA`` to OU's ``trainer.TRAINER_REGISTRY`` and the
    ``ASUSmoothedTeacher`` model handler to ``model.MODEL_REGISTRY``; return the trainer registry.

    Idempotent: calling it again (Hydra re-imports plugin modules) changes nothing.
    ``trainer_module`` is OU's ``trainer`` package when the caller already holds it.
    """
    ou_trainer = trainer_module if trainer_module is not None else _import_ou_trainer()
    registry = getattr(ou_trainer, "TRAINER_REGISTRY", None)
    if not isinstance(registry, dict):
        raise RuntimeError(
            f"OpenUnlearning's `trainer` package ({getattr(ou_trainer, '__file__', '?')}) has no "
            "TRAINER_REGISTRY dict: its API changed. asu-plugin is written against OU commit "
            f"{OU_PINNED_COMMIT}; check out that commit or update asu_plugin.openunlearning.registration."
        )
    from . import trainers  # imports OU's GradDiff: only possible once OU is importable

    source = getattr(ou_trainer, "__file__", None)
    if source:  # <OU_DIR>/src/trainer/__init__.py
        warn_if_other_commit(Path(source).resolve().parents[2])

    for name in TRAINER_NAMES:
        _put(registry, name, getattr(trainers, name), "TRAINER_REGISTRY")
    _register_model_handler()
    logger.debug("asu_plugin: registered %s in OU's TRAINER_REGISTRY", ", ".join(TRAINER_NAMES))
    return registry
