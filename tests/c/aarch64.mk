# The C tests cross-built for aarch64 and run under qemu-user (Debian's
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user):
#   make -f aarch64.mk test   the -O2 builds: test_kernels, test_reduced and test_core once
#                             with LSTM_INFER_ISA=scalar and once with =neon
#                             (each run tests the set it names), then
#                             test_dense (every set), test_loader, test_pool
#   make -f aarch64.mk asan   the same under ASan+UBSan with the NEON set only (the
#                             scalar file is ASan-tested natively on x86, and
#                             emulated ASan is slow), LeakSanitizer off (it needs
#                             ptrace, which qemu-user lacks)
# The programs are built by tests/c/Makefile (src/sources.mk's files, and
# kernels_neon.c for aarch64, which needs no flags); this file runs them.
# test_pool runs without its fork tests (LSTM_TEST_NO_FORK): qemu-user cannot
# fork a process that has threads.
CROSS ?= aarch64-linux-gnu-
SYSROOT ?= /usr/aarch64-linux-gnu
QEMU ?= qemu-aarch64 -L $(SYSROOT)
BUILD := ./build/aarch64
BUILD_WITH := $(MAKE) --no-print-directory -f Makefile CC=$(CROSS)gcc BUILD=$(BUILD)
PROGRAMS := test_kernels test_reduced test_core test_dense test_loader test_pool
ASAN_ENV := ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# $(call run_all,SUFFIX,ENV,ISAS): every program of one build under qemu
run_all = set -e; \
	for isa in $(3); do for p in test_kernels test_reduced test_core; do \
		echo "== $${p}$(1) LSTM_INFER_ISA=$$isa (aarch64, qemu)"; \
		LSTM_INFER_ISA=$$isa $(2) $(QEMU) $(BUILD)/$${p}$(1); done; done; \
	for p in test_dense test_loader; do echo "== $${p}$(1) (aarch64, qemu)"; $(2) $(QEMU) $(BUILD)/$${p}$(1); done; \
	echo "== test_pool$(1) (aarch64, qemu)"; LSTM_TEST_NO_FORK=1 $(2) $(QEMU) $(BUILD)/test_pool$(1)

.PHONY: all test asan clean
all: test

test:
	$(BUILD_WITH) $(addprefix $(BUILD)/,$(PROGRAMS))
	$(call run_all,,,scalar neon)

asan:
	$(BUILD_WITH) $(addprefix $(BUILD)/,$(addsuffix _asan,$(PROGRAMS)))
	$(call run_all,_asan,$(ASAN_ENV),neon)

clean:
	rm -rf $(BUILD)
