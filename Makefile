# The C library, without Python (setup.py builds the Python extension):
#   make                          liblstm_infer.a, liblstm_infer.so (soname liblstm_infer.so.MAJOR)
#                                 and lstm_infer.pc, in $(BUILD)
#   make install PREFIX=/usr/local [DESTDIR=...]   the libraries, lstm_infer.pc and lstm_infer.h
#   make check                    the C tests (tests/c, plain and under ASan+UBSan)
#   make example                  examples/c/lstm_run, linked with the static library
#   make ceilings                 tools/ceilings.c (x86-64): this CPU's ceilings, the batch-1
#                                 cases' lower bounds and the library's share of them
#   make fuzz FUZZ_SECONDS=60     the model-file loader under libFuzzer (needs clang)
# The sources are src/sources.mk's; the kernel files follow $(CC)'s target, so
# `make CC=aarch64-linux-gnu-gcc` cross-builds. The version is lstm_infer/__init__.py's.
include src/sources.mk

CC ?= cc
AR ?= ar
CFLAGS ?= -O3
BUILD ?= build/c
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' lstm_infer/__init__.py)
SOVERSION := $(firstword $(subst ., ,$(VERSION)))
ARCH := $(firstword $(subst -, ,$(shell $(CC) -dumpmachine)))
# (kernel files not written yet for this target are skipped)
ISA_SOURCES := $(wildcard $(LSTM_ISA_SOURCES_$(ARCH)))
# What the library needs whatever CFLAGS says: its standard, hidden internals
# (the header marks the API), no errno from libm (lets the compiler vectorise).
LIB_CFLAGS := -std=c11 -pthread -fPIC -fvisibility=hidden -fno-math-errno -Wall -Wextra -pedantic -Isrc
LIBS := -pthread -lm

SONAME := liblstm_infer.so.$(SOVERSION)
SHARED := $(BUILD)/liblstm_infer.so.$(VERSION)
STATIC := $(BUILD)/liblstm_infer.a
OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LSTM_SOURCES) $(ISA_SOURCES))
HDRS := $(wildcard src/*.h)

.PHONY: all install uninstall check example ceilings fuzz fuzz-build clean
all: $(STATIC) $(SHARED) $(BUILD)/lstm_infer.pc

$(BUILD)/obj/%.o: src/%.c $(HDRS) src/sources.mk
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LIB_CFLAGS) $(LSTM_ISA_FLAGS_$*) -c $< -o $@

$(STATIC): $(OBJS)
	rm -f $@
	$(AR) rcs $@ $(OBJS)

$(SHARED): $(OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,-z,defs -o $@ $(OBJS) $(LIBS)
	ln -sf liblstm_infer.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/liblstm_infer.so

# $(call pc,PREFIX): lstm_infer.pc.in for that installation
pc = sed -e 's|@PREFIX@|$(1)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	-e 's|@VERSION@|$(VERSION)|' lstm_infer.pc.in

$(BUILD)/lstm_infer.pc: lstm_infer.pc.in lstm_infer/__init__.py
	@mkdir -p $(@D)
	$(call pc,$(PREFIX)) > $@

# Only the public header is installed; the .pc is written for this PREFIX.
install: all
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf liblstm_infer.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liblstm_infer.so
	install -m 644 src/lstm_infer.h $(DESTDIR)$(INCLUDEDIR)/
	$(call pc,$(PREFIX)) > $(DESTDIR)$(PKGCONFIGDIR)/lstm_infer.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/liblstm_infer.a $(DESTDIR)$(LIBDIR)/liblstm_infer.so* \
		$(DESTDIR)$(INCLUDEDIR)/lstm_infer.h $(DESTDIR)$(PKGCONFIGDIR)/lstm_infer.pc

check:
	$(MAKE) -C tests/c CC="$(CC)" test asan

example: $(BUILD)/lstm_run
$(BUILD)/lstm_run: examples/c/lstm_run.c $(STATIC)
	$(CC) $(CFLAGS) -std=c11 -Wall -Wextra -pedantic -Isrc $< $(STATIC) $(LIBS) -o $@

ceilings: $(BUILD)/ceilings
$(BUILD)/ceilings: tools/ceilings.c $(STATIC)
	$(CC) $(CFLAGS) -std=gnu11 -Wall -Wextra -Isrc $< $(STATIC) $(LIBS) -o $@

# libFuzzer: every source built with the sanitizers, a corpus of our own under
# $(BUILD)/fuzz-corpus seeded from tests/fuzz/corpus (which it does not change).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -g -O1 -std=c11 -pthread -Isrc -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OBJS := $(patsubst src/%.c,$(BUILD)/fuzz-obj/%.o,$(LSTM_SOURCES) $(ISA_SOURCES))
$(BUILD)/fuzz-obj/%.o: src/%.c $(HDRS) src/sources.mk
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(LSTM_ISA_FLAGS_$*) -c $< -o $@
$(BUILD)/fuzz_loader: tests/fuzz/fuzz_loader.c $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJS) -lm -o $@
fuzz-build: $(BUILD)/fuzz_loader
fuzz: $(BUILD)/fuzz_loader
	@mkdir -p $(BUILD)/fuzz-corpus
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(BUILD)/fuzz_loader \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
		-dict=tests/fuzz/loader.dict -artifact_prefix=$(BUILD)/ $(FUZZ_ARGS) \
		$(BUILD)/fuzz-corpus tests/fuzz/corpus

clean:
	rm -rf $(BUILD)
