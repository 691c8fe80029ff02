"""The request loop of the engine drivers (conftest.EngineProcess talks to it).

A driver runs in the engine venv's python. It reads one JSON request per line on stdin,
{"op": NAME, ...arguments}, calls ops[NAME](**arguments) and answers on stdout with one line
"@@TW@@ {"ok": true, "result": ...}" (or "ok": false with the traceback). Everything else the engines print
goes to stdout/stderr as logs, which the test keeps. End of input ends the driver.

Block contents are made from (seed, index) so that another process, after a remount, can check what it
loads byte for byte without being told the bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback

import numpy as np

REPLY_TAG = "@@TW@@ "


def block_bytes(seed: int, index: int, size: int) -> bytes:
    """The deterministic contents of block `index` of a test run with `seed`."""
    return np.random.default_rng([seed, index]).integers(0, 256, size, dtype=np.uint8).tobytes()


def sha256(data) -> str:
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def first_difference(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    for i in range(len(got)):
        if got[i] != want[i]:
            return f"first difference at byte {i}: {got[i]} != {want[i]}"
    return "equal"


def serve(ops: dict) -> None:
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        op = request.pop("op")
        try:
            reply = {"ok": True, "result": ops[op](**request)}
        except BaseException:  # noqa: BLE001 - every failure goes back to the test
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(REPLY_TAG + json.dumps(reply) + "\n")
        out.flush()
