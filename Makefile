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
	# torch and torchvision first, as one matched pair, before anything that depends on torch: timm (the
	# vision extra) imports torchvision at import time, and the only torchvision built for torch 2.13 is a
	# CUDA build whose C++ operators fail to register beside the CPU torch 2.13 (and then break
	# `import transformers`). Left to itself, pip would also pick such a mismatched pair.
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[text,vision,dev]"
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
