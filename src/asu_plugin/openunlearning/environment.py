"""Where OpenUnlearning lives and how its processes run: the constants every OU caller shares.

One place for the default checkout (``$OU_DIR``, default ``~/.cache/asu-plugin/open-unlearning``),
the commit the plugin is tested against, and the environment of every OU subprocess (offline:
nothing may download weights or data at run time). Imports nothing of OU, so any module may
use it without an import cycle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The OpenUnlearning commit the plugin is written and tested against.
OU_PINNED_COMMIT = "d3d7cf9"
DEFAULT_OU_DIR = "~/.cache/asu-plugin/open-unlearning"
#: Hugging Face libraries never reach the hub: data and models come from local paths.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: An OU subprocess's environment: offline, and OpenMP threads that sleep when idle (on a shared
#: 2-core machine busy-waiting threads slow every process down by 10x and more).
JOB_ENV = {**OFFLINE_ENV, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def ou_dir() -> Path:
    """The OpenUnlearning checkout named by ``$OU_DIR`` (default ``~/.cache/asu-plugin/open-unlearning``)."""
    return Path(os.environ.get("OU_DIR") or DEFAULT_OU_DIR).expanduser()


def ou_commit(directory: str | os.PathLike | None = None) -> str | None:
    """Full commit hash of the OU checkout at ``directory`` (or the imported one); None if unknown."""
    if directory is None:
        trainer = sys.modules.get("trainer")
        source = getattr(trainer, "__file__", None)
        directory = Path(source).resolve().parents[2] if source else ou_dir()
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
