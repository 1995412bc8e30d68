"""The one way this project runs OpenUnlearning's scripts: a subprocess in the OU checkout.

Why subprocesses: exactly the commands a user would type are run, each with a fresh Hydra,
RNG and memory. The demo streams the output to the terminal, the job runner (:mod:`.jobs`) to
one log file per job, the tests capture it; all three go through :func:`run_in_ou`, which
also measures the child's own CPU seconds (``os.wait4``: a cost that does not depend on what
else the machine was doing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .environment import JOB_ENV


def ou_script_args(script: str, overrides: Sequence[str] = (), config_name: Optional[str] = None,
                   run_dir: Optional[os.PathLike] = None) -> list[str]:
    """``src/<script>.py [--config-name=...] <overrides> [hydra.run.dir=... paths.output_dir=...]``."""
    script = script if script.endswith(".py") else f"{script}.py"
    config = [f"--config-name={config_name}"] if config_name else []
    where = [f"hydra.run.dir={run_dir}", f"paths.output_dir={run_dir}"] if run_dir is not None else []
    return [f"src/{script}", *config, *overrides, *where]


@dataclass
class OUProcess:
    """A finished run: exit code, what it printed (when captured), its wall and CPU seconds."""

    argv: list
    returncode: int
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_in_ou(args: Sequence[str], ou_dir: os.PathLike, *, log: Optional[Path] = None, capture: bool = False,
              env: Optional[dict] = None, timeout: Optional[float] = None,
              python: str = sys.executable) -> OUProcess:
    """Run ``python <args>`` in ``ou_dir`` with the offline job environment (plus ``env``).

    Output: appended to ``log`` (stdout and stderr together), returned (``capture``), or shown
    (neither). A run past ``timeout`` seconds is killed and reported with returncode -9.
    """
    argv = [python, *map(str, args)]
    full_env = {**os.environ, **JOB_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        if log is not None:
            handle = open(log, "a")
            streams = {"stdout": handle, "stderr": subprocess.STDOUT}
        elif capture:
            handle, streams = None, {"stdout": out, "stderr": err}
        else:
            handle, streams = None, {}
        start = time.time()
        try:
            process = subprocess.Popen(argv, cwd=ou_dir, env=full_env, **streams)
            timer = threading.Timer(timeout, process.kill) if timeout else None
            if timer:
                timer.start()
            try:
                _, status, usage = os.wait4(process.pid, 0)
            finally:
                if timer:
                    timer.cancel()
            process.returncode = code = os.waitstatus_to_exitcode(status)
        finally:
            if handle is not None:
                handle.close()
        result = OUProcess(argv, code, wall_s=time.time() - start, cpu_s=usage.ru_utime + usage.ru_stime)
        if capture and log is None:
            out.seek(0), err.seek(0)
            result.stdout, result.stderr = out.read(), err.read()
    return result
