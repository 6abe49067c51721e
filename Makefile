# ekiden-trace: `make demo` shows it working, `make test` runs the tests.
# Both install what they need first (a venv in .venv, Debian packages via apt).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CC := gcc
# What a user builds: warnings shown, never fatal (newer compilers warn where gcc 12 does not).
FIXTURE_CFLAGS := -std=c99 -D_GNU_SOURCE -g -O2 -Wall -Wextra -I probes
# `make lint` compiles every fixture strictly: -Werror, glibc's fortify checks, gcc and clang.
STRICT_CFLAGS := -std=c99 -D_GNU_SOURCE -D_FORTIFY_SOURCE=3 -g -O2 -Wall -Wextra -Werror -I probes
FIXTURE_SOURCES := $(wildcard fixtures/*/v*.c)
FIXTURES := $(FIXTURE_SOURCES:.c=)
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: setup system-packages fixtures test demo demo-ftp soak lint lint-fixtures clean

setup: system-packages $(VENV)/.installed

# Debian packages: C compilers (gcc, and clang for the toolchain tests), <sys/sdt.h>, venv
# support, gdb (a test oracle).
system-packages:
	@missing=""; \
	command -v $(CC) >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v clang >/dev/null || missing="$$missing clang"; \
	echo '#include <sys/sdt.h>' | $(CC) -E -x c - >/dev/null 2>&1 || missing="$$missing systemtap-sdt-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v gdb >/dev/null || missing="$$missing gdb"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(APT) update && $(APT) install $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

fixtures: system-packages $(FIXTURES)

fixtures/%: fixtures/%.c probes/ekiden.h fixtures/lines.h
	$(CC) $(FIXTURE_CFLAGS) $< -o $@

# fixtures/units links two units both called util.c (a/ and b/), each compiled in its own
# folder as a recursive make does: DWARF and the ELF's FILE symbols call both "util.c".
UNITS := fixtures/units/a/util.c fixtures/units/b/util.c
fixtures/units/v%: fixtures/units/v%.c $(UNITS) probes/ekiden.h fixtures/lines.h
	tmp=$$(mktemp -d) && for unit in a b; do \
		(cd fixtures/units/$$unit && $(CC) $(FIXTURE_CFLAGS:probes=$(CURDIR)/probes) -c util.c \
			-o $$tmp/$$unit.o) || { rm -rf $$tmp; exit 1; }; done; \
	$(CC) $(FIXTURE_CFLAGS) $< $$tmp/a.o $$tmp/b.o -o $@; status=$$?; rm -rf $$tmp; exit $$status

# The same fixture with every mark compiled out, for the benchmarks' overhead ratios.
fixtures/%-unmarked: fixtures/%.c probes/ekiden.h
	$(CC) $(FIXTURE_CFLAGS) -DEKIDEN_DISABLE $< -o $@

test: setup fixtures
	$(PY) -m pytest -q

# What only the benchmarks need: valgrind (instruction counts of marked and unmarked builds).
.PHONY: bench bench-packages
bench-packages:
	@command -v valgrind >/dev/null || { echo "installing Debian packages: valgrind"; \
		$(APT) update && $(APT) install valgrind; }

bench: setup fixtures bench-packages
	$(PY) bench/run.py

demo: setup fixtures
	$(PY) fixtures/demo.py

soak: setup fixtures
	cd tests && ../$(PY) soak.py --updates 500 --write

demo-ftp: setup fixtures
	$(PY) fixtures/demo_ftp.py

# ruff, and the package layering (tests/layering.py: lower layers never import upper ones, no cycles).
lint: setup lint-fixtures
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tests/layering.py

lint-fixtures: system-packages
	@for cc in gcc clang; do for src in $(FIXTURE_SOURCES); do \
		$$cc $(STRICT_CFLAGS) -c $$src -o /dev/null || exit 1; done; done
	@for cc in gcc clang; do for src in $(UNITS); do \
		$$cc $(STRICT_CFLAGS) -c $$src -o /dev/null || exit 1; done; done
	@echo "fixtures: no warnings from gcc or clang with -Werror -D_FORTIFY_SOURCE=3"


clean:
	rm -f $(FIXTURES)
