"""Builds the client's C lookup (tokenwarehouse/_mapcopy.c) next to its source before the tests import the
package from this checkout, as `pip install` builds it into the installed copy; the tests then run the
client both ways (tests/test_layout.py: the `client` fixture, native and pure Python).

Where no C compiler, Python headers or xxhash.h are found the tests run the Python path only, except in
CI (CI=true), where a missing accelerator fails the run instead of leaving it untested.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokenwarehouse"
SOURCE = PACKAGE / "_mapcopy.c"
TARGET = PACKAGE / ("_mapcopy" + sysconfig.get_config_var("EXT_SUFFIX"))

BUILD_ERROR: str | None = None


def _build() -> str | None:
    """Compiles the extension if it is missing or older than its source; returns why it could not."""
    if TARGET.exists() and TARGET.stat().st_mtime >= SOURCE.stat().st_mtime:
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler"
    tmp = TARGET.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cc, "-O2", "-std=gnu11", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"], "-o", str(tmp),
           str(SOURCE)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"{' '.join(cmd)} failed:\n{r.stderr}"
    os.replace(tmp, TARGET)   # atomically: a concurrent run never imports half a library
    return None


BUILD_ERROR = _build()
if BUILD_ERROR and os.environ.get("CI") == "true":
    raise RuntimeError(f"the Python client's C lookup did not build: {BUILD_ERROR}")
sys.path.insert(0, str(PACKAGE.parent))
