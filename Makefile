# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first: otherwise a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[text,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m sttabt.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The slow suite's page check needs a real browser: Debian's chromium (root, as on CI; skipped with a
# reason where it cannot be installed).
test-slow: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || true
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	bash benchmarks/run_runtime_bench.sh
	bash benchmarks/run_abt_bench.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
