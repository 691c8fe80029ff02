"""Builds the client's C lookup next to its source before the tests import the package from this checkout
(native_build.py), so tests/test_layout.py runs the client both ways (its `client` fixture: native and
pure Python).

Where no C compiler, Python headers or xxhash.h are found the tests run the Python path only, except in
CI (CI=true), where a missing accelerator fails the run instead of leaving it untested.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from native_build import build_in_place  # noqa: E402

BUILD_ERROR = build_in_place()
if BUILD_ERROR:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the Python client's C lookup did not build: {BUILD_ERROR}")
    os.environ["TW_MAPCOPY_BUILD_ERROR"] = BUILD_ERROR.splitlines()[0][:300]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
