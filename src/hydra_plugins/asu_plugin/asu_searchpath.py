"""Search-path plugin: our ``configs/`` for Hydra, our trainers for OU's registry.

Why it is safe in any Hydra app:
* importing this module costs nothing (no torch, no asu_plugin import: the configs are
  located with ``importlib.util.find_spec``, which does not run ``asu_plugin/__init__``);
* trainers are registered only when OU's ``trainer`` package is *already imported* (OU's
  ``train.py`` and ``eval.py`` import it before Hydra starts); another app that happens to
  have no such package is left alone, and an app whose ``trainer`` module is not OU's
  (no ``TRAINER_REGISTRY``) too;
* registration is idempotent, because Hydra 1.3.0 executes plugin modules more than once.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

logger = logging.getLogger(__name__)

PROVIDER = "asu-plugin"


def configs_dir() -> Path | None:
    """Our configs: ``asu_plugin/configs`` (a symlink to the repo's ``configs/`` in a checkout,
    a copy of it in an installed wheel)."""
    spec = importlib.util.find_spec("asu_plugin")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "configs"
        if candidate.is_dir():
            return candidate.resolve()
    return None


def register_if_openunlearning() -> bool:
    """Register ASU_GD / ASU_KL when this process runs OU; True if it did."""
    ou_trainer = sys.modules.get("trainer")
    if ou_trainer is None or not isinstance(getattr(ou_trainer, "TRAINER_REGISTRY", None), dict):
        logger.debug("asu-plugin: OpenUnlearning's trainer package not loaded; nothing to register")
        return False
    try:
        from asu_plugin.openunlearning.registration import register

        register(ou_trainer)
    except ImportError as error:
        if (error.name or "").split(".")[0] in ("trainer", "data", "model", "evals"):
            logger.debug("asu-plugin: OpenUnlearning not importable (%s); trainers not registered", error)
            return False
        logger.warning("asu-plugin: ASU trainers not registered: %s: %s", type(error).__name__, error)
        return False
    except Exception as error:  # never take down the host app (e.g. OU running GradDiff)
        logger.warning("asu-plugin: ASU trainers not registered: %s: %s", type(error).__name__, error)
        return False
    return True


def _config_name(argv: list[str]) -> str | None:
    for index, token in enumerate(argv):
        for flag in ("--config-name", "-cn"):
            if token == flag and index + 1 < len(argv):
                return argv[index + 1]
            if token.startswith(flag + "="):
                return token.split("=", 1)[1]
    return None


def finetune_config_hint(argv: list[str]) -> str | None:
    """A hint when an ASU trainer is asked for on OU's finetune config (``train.yaml``).

    ``python src/train.py trainer=ASU_KL`` composes train.yaml, whose data has no forget set;
    the trainer refuses it later, but Hydra or the model download may fail first.
    """
    trainers = [t.split("=", 1)[1] for t in argv[1:] if t.startswith(("trainer=", "+trainer="))]
    asu = [name for name in trainers if name.startswith("ASU_")]
    if not asu or not argv or not argv[0].endswith("train.py"):
        return None
    name = _config_name(argv)
    if name is not None and "unlearn" in name:
        return None
    return (
        f"trainer={asu[-1]} unlearns, but this composes OU's finetune config "
        f"({name or 'train.yaml'}), which has no forget/retain data. Run: python src/train.py "
        f"--config-name=unlearn.yaml experiment=unlearn/tofu/asu trainer={asu[-1]} task_name=<name> "
        "(on a CPU: experiment=unlearn/tofu/asu_cpu)"
    )


class ASUSearchPathPlugin(SearchPathPlugin):
    """Appends asu-plugin's configs (trainer/ASU_*, experiment/unlearn/*/asu*, model/...)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        directory = configs_dir()
        if directory is None:
            logger.debug("asu-plugin: configs directory not found; search path unchanged")
        elif not any(element.provider == PROVIDER for element in search_path.get_path()):
            search_path.append(PROVIDER, f"file://{directory}")
        if register_if_openunlearning():
            hint = finetune_config_hint(sys.argv)
            if hint:
                logger.warning("asu-plugin: %s", hint)
