# The C core's source files: the one list read by the Makefile, tests/c/Makefile
# and setup.py (which reads the plain `NAME := files` lines below). Paths are
# relative to the repository root.

# Plain C11 + POSIX threads, built for every target.
LSTM_SOURCES := src/model.c src/forward.c src/status.c src/pool.c src/dispatch.c src/kernels_scalar.c src/loader.c src/dense.c

# Kernel files of one instruction set, per target architecture (the first part of
# `$(CC) -dumpmachine`, or Python's platform.machine()). Each is compiled with its
# own flags, LSTM_ISA_FLAGS_<file name without .c>; kernels_neon.c needs none on
# aarch64, where NEON is part of the base instruction set.
LSTM_ISA_SOURCES_x86_64 := src/kernels_avx2.c src/kernels_avx512.c
LSTM_ISA_SOURCES_aarch64 := src/kernels_neon.c
LSTM_ISA_FLAGS_kernels_avx2 := -mavx2 -mfma -mf16c
LSTM_ISA_FLAGS_kernels_avx512 := -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mfma -mf16c
LSTM_ISA_FLAGS_kernels_neon :=
