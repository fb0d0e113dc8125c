# The C tests cross-built for aarch64 and run under qemu-user (Debian's
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user):
#   make -f aarch64.mk test   test_kernels and test_core at -O2, once with
#                             LSTM_INFER_ISA=scalar and once with =neon (each
#                             run tests the set it names), and test_pool
#   make -f aarch64.mk asan   the same under ASan+UBSan (LeakSanitizer off:
#                             it needs ptrace, which qemu-user lacks)
# test_pool runs without its fork tests (LSTM_TEST_NO_FORK): qemu-user cannot
# fork a process that has threads.
# On aarch64 the NEON kernels are chosen at build time: no -m flags.
CROSS ?= aarch64-linux-gnu-
CC := $(CROSS)gcc
SYSROOT ?= /usr/aarch64-linux-gnu
QEMU ?= qemu-aarch64 -L $(SYSROOT)
SRC_DIR := ../../src
KERNELS := $(SRC_DIR)/dispatch.c $(SRC_DIR)/kernels_scalar.c $(SRC_DIR)/kernels_neon.c
CORE := $(SRC_DIR)/model.c $(SRC_DIR)/forward.c $(SRC_DIR)/status.c $(SRC_DIR)/pool.c $(KERNELS)
POOL := $(SRC_DIR)/pool.c
HDRS := $(wildcard $(SRC_DIR)/*.h) harness.h
CFLAGS := -std=gnu11 -pthread -Wall -Wextra -Wno-unused-parameter -Werror -I$(SRC_DIR) -g
LDLIBS := -pthread -lm
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
BUILD := ./build/aarch64
ISAS := scalar neon

.PHONY: all test asan clean
all: test

$(BUILD)/test_core: test_core.c $(CORE) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O2 test_core.c $(CORE) -o $@ $(LDLIBS)
$(BUILD)/test_kernels: test_kernels.c $(KERNELS) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O2 test_kernels.c $(KERNELS) -o $@ $(LDLIBS)
$(BUILD)/test_pool: test_pool.c $(POOL) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O2 test_pool.c $(POOL) -o $@ $(LDLIBS)

$(BUILD)/test_core_asan: test_core.c $(CORE) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O1 $(SAN) test_core.c $(CORE) -o $@ $(LDLIBS)
$(BUILD)/test_kernels_asan: test_kernels.c $(KERNELS) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O1 $(SAN) test_kernels.c $(KERNELS) -o $@ $(LDLIBS)
$(BUILD)/test_pool_asan: test_pool.c $(POOL) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -O1 $(SAN) test_pool.c $(POOL) -o $@ $(LDLIBS)

# run(binary): under qemu with each ISA forced in turn
run = set -e; for isa in $(ISAS); do echo "== $(notdir $(1)) LSTM_INFER_ISA=$$isa (aarch64, qemu)"; \
	LSTM_INFER_ISA=$$isa $(2) $(QEMU) $(1); done

test: $(BUILD)/test_kernels $(BUILD)/test_core $(BUILD)/test_pool
	$(call run,$(BUILD)/test_kernels)
	$(call run,$(BUILD)/test_core)
	LSTM_TEST_NO_FORK=1 $(QEMU) $(BUILD)/test_pool

ASAN_ENV := ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
asan: $(BUILD)/test_kernels_asan $(BUILD)/test_core_asan $(BUILD)/test_pool_asan
	$(call run,$(BUILD)/test_kernels_asan,$(ASAN_ENV))
	$(call run,$(BUILD)/test_core_asan,$(ASAN_ENV))
	LSTM_TEST_NO_FORK=1 $(ASAN_ENV) $(QEMU) $(BUILD)/test_pool_asan

clean:
	rm -rf $(BUILD)
