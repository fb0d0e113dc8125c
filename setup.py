"""Builds the one extension, lstm_infer._core, with the C core compiled in.

Each SIMD kernel file is compiled with its own instruction-set flags; the
rest of the core is plain C11 + POSIX threads that runs on any x86-64 (or other) CPU, and the
kernels are chosen at run time (src/dispatch.c).
"""
import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def read_sources(path=os.path.join(HERE, "src", "sources.mk")):
    """The `NAME := words` lines of src/sources.mk, the one source list (the Makefiles read it too)."""
    names = {}
    with open(path) as fh:
        for line in fh:
            if ":=" in line and not line.lstrip().startswith("#"):
                name, _, value = line.partition(":=")
                names[name.strip()] = value.split()
    return names


SOURCES = read_sources()
CORE = SOURCES["LSTM_SOURCES"]
ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
# this target's per-ISA kernel files (those written so far) and the flags only they are compiled with
ISA_FILES = {path: SOURCES.get("LSTM_ISA_FLAGS_" + os.path.splitext(os.path.basename(path))[0], [])
             for path in SOURCES.get("LSTM_ISA_SOURCES_" + ARCH, []) if os.path.exists(os.path.join(HERE, path))}
BASE_FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]


class BuildExt(build_ext):
    """Adds each ISA file's flags to that file alone (distutils has no per-file flags)."""

    def build_extensions(self):
        compiler = self.compiler
        original = compiler._compile

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):
            flags = list(extra_postargs)
            for path, isa_flags in ISA_FILES.items():
                if os.path.normpath(src).endswith(os.path.normpath(path)):
                    flags += isa_flags
            return original(obj, src, ext, cc_args, flags, pp_opts)

        compiler._compile = compile_one
        super().build_extensions()


sources = ["lstm_infer/_core.pyx"] + CORE + list(ISA_FILES)
ext = Extension(
    "lstm_infer._core",
    sources=sources,
    include_dirs=["src", np.get_include()],
    extra_compile_args=BASE_FLAGS,
    extra_link_args=["-pthread"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize([ext], language_level=3, compiler_directives={"boundscheck": False,
                                                                        "wraparound": False}),
    cmdclass={"build_ext": BuildExt},
)
