# Two commands do everything from nothing: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On x86_64 these torch/torchvision builds lie on disk here; a range admits them.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean bench

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PINS) 2>/dev/null || $(PIP) install -q --disable-pip-version-check "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
	$(PIP) install -q --disable-pip-version-check -e ".[test,plot]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mnisttk data
	$(VENV)/bin/mnisttk pipeline

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
