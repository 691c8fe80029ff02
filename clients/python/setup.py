"""Builds the optional C accelerator of the DRAM tier's reads (tokenwarehouse/_mapcopy.c).

Metadata lives in pyproject.toml. The extension needs a C compiler, Python's headers and xxhash.h
(Debian: libxxhash-dev); where one is missing the build goes on without it and the client reads the tier
in Python (Client.native says which).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("tokenwarehouse._mapcopy", ["tokenwarehouse/_mapcopy.c"],
                             extra_compile_args=["-O2", "-std=gnu11"], optional=True)])
