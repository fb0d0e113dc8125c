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

CORE = ["src/model.c", "src/forward.c", "src/status.c", "src/pool.c", "src/dispatch.c",
        "src/kernels_scalar.c"]
# per-ISA kernel files and the flags only they are compiled with
ISA_FILES = {"src/kernels_avx2.c": ["-mavx2", "-mfma"]}
X86 = platform.machine().lower() in ("x86_64", "amd64")
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


sources = ["lstm_infer/_core.pyx"] + CORE + (list(ISA_FILES) if X86 else [])
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
