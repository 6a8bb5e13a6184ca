"""Builds the Cython extensions (the per-message hot path, DESIGN §8).

Environment switches, in the manner of uvloop and msgspec:
  MKIPC_DEBUG=1     keep asserts and build with -O0 -g
  MKIPC_SANITIZE=1  build with AddressSanitizer and UBSan
  MKIPC_ANNOTATE=1  write Cython's HTML annotation next to each .pyx
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MKIPC_DEBUG") == "1"
SANITIZE = os.environ.get("MKIPC_SANITIZE") == "1"

cflags = ["-O0", "-g"] if DEBUG else ["-O2"]
ldflags: list[str] = []
if SANITIZE:
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]
macros = [] if DEBUG else [("NDEBUG", "1")]


def extension(name: str) -> Extension:
    return Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        include_dirs=["kernel/_core"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=macros,
    )


# One extension per hot path (STYLE §3): the ring, the capability table, the
# kernel's per-message core, a pipe's read and write, a queue's send and receive,
# a process's submit/wait through the kernel, a direct session's per-message path,
# the common paths of the client's session objects over it, and kernel.Service's
# per-request path.
extensions = [
    extension("kernel._core.ring"),
    extension("capabilities._table"),
    extension("kernel._core.kcore"),
    extension("kernel._core.pipes"),
    extension("kernel._core.queues"),
    extension("kernel._core.conn"),
    extension("kernel._core.port"),
    extension("kernel._core.faces"),
    extension("kernel._core.serve"),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        include_path=["."],
        annotate=os.environ.get("MKIPC_ANNOTATE") == "1",
    ),
)
