# phibox: the two commands a newcomer needs are `make test` and `make demo`.
# Everything is installed here, pinned by constraints.txt; nothing is installed by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.phibox-installed
PYTEST_ARGS ?=

.PHONY: help install test lint constraints clean system-deps demo bench appliance

help:
	@echo "make demo    install, build the demo bundle (tiny model, sample manuals) and serve the kiosk"
	@echo "make test    install everything pinned into $(VENV) and run the whole test suite"
	@echo "make bench   measure phibox's paths side by side with the raw libraries"
	@echo "make appliance KEY=admin.key   the offline install file for kiosks (dist/phibox-appliance-*.tar)"
	@echo "make lint    ruff over the code, and the import contracts between the rooms (import-linter)"
	@echo "make clean   remove $(VENV) (build caches in ~/.cache/phibox stay)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned, so no other package can pull torch's CUDA build (several GB).
# llama-cpp-python compiles from source once (about 5 minutes); pip caches the built wheel.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt --upgrade pip setuptools wheel
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[all]'
	$(BIN)/phibox converter fetch
	touch $@

install: $(STAMP)

# Debian packages the tests use: systemd-analyze (unit checks), Chromium and its driver (browser
# tests), fonts-noto-cjk (the kiosk page in Chinese shows no tofu boxes), qemu-user (the appliance's
# llama.cpp on older emulated CPUs). Installed when missing and we are root with apt; otherwise those tests skip and say why.
system-deps:
	@missing=""; command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	fc-list 2>/dev/null | grep -q "Noto Sans CJK" || missing="$$missing fonts-noto-cjk"; \
	command -v qemu-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: missing$$missing; the tests that need them will skip"; fi; \
	fi

test: system-deps $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check device export train tests
	$(BIN)/lint-imports

# The first run trains and exports the tiny demo model (a few minutes); later runs start in seconds.
demo: $(STAMP)
	$(BIN)/phibox demo --out .demo --port $(or $(PORT),8080)

# One table of measured ratios (phibox vs the raw libraries), also written to bench-results.json.
bench: $(STAMP)
	$(BIN)/phibox bench --demo-dir .demo --out bench-results.json $(ARGS)

# The offline install file for kiosks, signed with the admin key. The first run builds llama.cpp for
# any CPU of this architecture (about 8 minutes on 2 cores; cached in ~/.cache/phibox).
KEY ?= admin.key
appliance: $(STAMP)
	@test -f "$(KEY)" || { echo "make appliance KEY=path/to/admin.key (phibox keygen --out admin.key makes one)"; exit 2; }
	$(BIN)/phibox appliance build --out dist --key $(KEY)

# After a deliberate upgrade: rebuild the pins from what is installed, then run make test.
constraints: $(STAMP)
	@echo "edit versions in constraints.txt by hand; installed now:"; $(PIP) freeze --exclude-editable

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
