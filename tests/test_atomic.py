"""Result files are never half-written, even when the writer is killed with SIGKILL mid-write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

WRITER = """
import sys
from asu_plugin.core.atomic import write_json_atomic
payload = "x" * 4_000_000  # large enough that a write takes milliseconds
i = 0
while True:
    write_json_atomic(sys.argv[1], {"i": i, "payload": payload, "end": True})
    i += 1
    if i == 1:
        print("first", flush=True)
"""


@pytest.mark.parametrize("round_", range(6))
def test_kill_9_during_writes_never_leaves_a_partial_file(tmp_path, round_, reliability):
    target = tmp_path / "result.json"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "first"
    time.sleep(random.Random(round_).uniform(0.01, 0.4))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    data = json.loads(target.read_text())  # complete, parseable: the old file or the new one
    assert data["end"] is True and len(data["payload"]) == 4_000_000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "result.json"]
    assert all(name.startswith(".result.json.") and name.endswith(".tmp") for name in leftovers)
    reliability(f"kill -9 while writing a result JSON (round {round_}, after write #{data['i']})",
                f"result.json complete and parseable; {len(leftovers)} hidden temp file(s) left, target intact")
