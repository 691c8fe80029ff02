"""Builds the client's C lookup (tokenwarehouse/_mapcopy.c) next to its source, as `pip install` builds it
into an installed copy, so tests that import the package from this checkout run the C path too. Used by
this directory's conftest.py and by IntegrationTests/mount/conftest.py."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokenwarehouse"
SOURCE = PACKAGE / "_mapcopy.c"
TARGET = PACKAGE / ("_mapcopy" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def build_in_place() -> str | None:
    """Compiles the extension if it is missing or older than its source. Returns why it could not (then no
    stale library is left behind: the client reads the tier in Python), or None."""
    if TARGET.exists() and TARGET.stat().st_mtime >= SOURCE.stat().st_mtime:
        return None
    TARGET.unlink(missing_ok=True)
    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        return "no C compiler"
    tmp = TARGET.with_suffix(f".{os.getpid()}.tmp")
    cmd = [*cc, "-O2", "-std=gnu11", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"], "-o", str(tmp),
           str(SOURCE)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        tmp.unlink(missing_ok=True)
        return f"{shlex.join(cmd)}: {e}"
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"{shlex.join(cmd)} failed:\n{r.stderr}"
    os.replace(tmp, TARGET)   # atomically: a concurrent run never imports half a library
    return None
