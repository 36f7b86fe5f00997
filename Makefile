# Two commands do everything from nothing: `make demo` and `make test`.
# Any Python >= 3.11 on PATH works; 3.11 is preferred (the tested one, and torch's files lie on disk for it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Bytecode. A machine that sets PYTHONDONTWRITEBYTECODE (this one does) would compile torch's sources in
# every process that imports it (3.3-5.2 s an import against 1.7 s), so it is unexported here and Python
# writes a module's .pyc on its first import. A test run imports 6,187 of the venv's 25,253 modules, so
# compiling all of site-packages ahead (53 s of a fresh install here) is mostly waste, but leaving it all
# to first imports cost pytest 50-70 s here (345-367 s against 296 s with the .pyc files there: three
# workers and their children compiling the same modules at once). So the packages a test run imports
# most from (counted from the .pyc files a run leaves) are compiled ahead on all cores: torch's while pip
# installs the extras, then the extras' (8,000 of their files took 14.8 s here); the rest on first import.
unexport PYTHONDONTWRITEBYTECODE
SITE = $(VENV)/lib/python3*/site-packages
COMPILE := $(PY) -m compileall -q -j 0
AHEAD := numpy onnx onnxruntime onnxscript onnx_ir executorch torchao nncf openvino jax scipy matplotlib \
	litert_torch ai_edge_quantizer ai_edge_litert PIL mpmath
# A range that admits the torch 2.14.1 / torchvision 0.29.1 builds on this disk (the tested ones).
TORCH_RANGE := "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
# gpu-check runs from the source tree with whatever interpreter already has torch (a GPU machine
# may have no network, so no install step): the venv's if there is one, else python3.
# Everything the demo shows: training, tests, plots, the LiteRT and ExecuTorch targets, OpenVINO's rows.
EXTRAS ?= train,test,plot,tflite,executorch,openvino,openvino-ir,cluster
# Free disk the install needs: the venv is ~7.4 GiB, and pip unpacks wheels beside it.
VENV_GIB ?= 9
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: demo test test-all test-quick lint venv wheel clean bench gpu gpu-check arm-check mutation browser-check

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Error: no python3 on PATH (set PYTHON=...)"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Error: $(PYTHON) is older than 3.11"; exit 2; }
	@test -x $(PY) || { free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge $(VENV_GIB) ] || { \
	  echo "Error: $$free GiB free here; the venv needs about $(VENV_GIB) GiB (torch's CUDA wheels)"; exit 2; }; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile $(TORCH_RANGE)  # bytecode: see above
	printf '%s\n' $(TORCH_RANGE) > $(VENV)/constraints.txt  # the extras must not move torch
	$(COMPILE) $(SITE)/torch $(SITE)/sympy $(SITE)/networkx >/dev/null 2>&1 & compiling=$$!; \
	$(PIP) install -q --no-compile -c $(VENV)/constraints.txt ".[$(EXTRAS)]"; installed=$$?; \
	wait $$compiling; exit $$installed
	$(COMPILE) $(addprefix $(SITE)/,$(AHEAD)) >/dev/null 2>&1 || true
	$(PIP) install -q "setuptools>=70.1"  # builds the wheel below without network (bdist_wheel built in)
	touch $@

venv: $(VENV)/.installed

# What users install is what runs and is tested: the tree is built into a wheel and that wheel
# installed (never an editable checkout), every time, so a file left out of the wheel fails here.
WHEEL_DIR := build/wheel
wheel: venv
	rm -rf build  # setuptools reuses build/lib: a module deleted from the tree must not linger in the wheel
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PIP) install -q --no-deps --force-reinstall $(WHEEL_DIR)/mnisttk-*.whl

demo: wheel
	$(VENV)/bin/mnisttk data
	$(VENV)/bin/mnisttk pipeline

# PYTHONSAFEPATH: neither pytest nor the tests' child interpreters put the checkout on sys.path, so
# `toolkit` is the installed wheel's (tests/test_install.py checks it).
# The suite in one pytest-xdist worker more than the cores, at most 4 (work stealing; the long end-to-end
# tests first). A worker often waits on a child process, so on 2 cores 3 workers measured 318 s against
# 372 s for 2 and 365 s for 4. PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); n=$$((n + 1)); [ $$n -gt 4 ] && n=4; echo $$n)
# `slow` tests (a second and third user model through every converter, the GPU script's CPU walk-through)
# run in `make test-all`.
# ruff first (a tenth of a second); mypy (23 s from a cold cache) beside pytest, whose workers often wait on
# their children, its verdict printed after pytest's: either failing fails `make test`.
test: wheel
	$(VENV)/bin/ruff check toolkit tests scripts benchmarks
	@$(VENV)/bin/mypy > build/mypy.log 2>&1 & mypy=$$!; \
	PYTHONSAFEPATH=1 MNISTTK_WHEEL_DIR=$(WHEEL_DIR) $(PY) -m pytest -q --durations=15 -n $(PYTEST_WORKERS) --dist worksteal \
	  -m "not slow"; tests=$$?; wait $$mypy; typed=$$?; echo "mypy:"; cat build/mypy.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

test-all: wheel lint
	PYTHONSAFEPATH=1 MNISTTK_WHEEL_DIR=$(WHEEL_DIR) $(PY) -m pytest -q --durations=15 -n $(PYTEST_WORKERS) --dist worksteal

# ruff (pyflakes, pycodestyle, bugbear, blind excepts, imports, pyupgrade, simplify) over the tree and mypy
# (check_untyped_defs) over toolkit/, configured in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check toolkit tests scripts benchmarks
	$(VENV)/bin/mypy

# The inner loop (61 s here, 56 s of it pytest): the gates, timing, compare and outputs, the CPU-choice policy through
# its doubles, the third hostile corpus and the 120-column check, on the tiny synthetic export; no real
# MNIST, no LiteRT or ExecuTorch export. `make test` is the whole proof.
QUICK := tests/test_gates.py tests/test_timing.py tests/test_compare.py tests/test_cpu_choices.py \
	tests/test_untrusted_round3.py tests/test_width.py tests/test_train_threads.py tests/test_integrity.py
test-quick: wheel
	PYTHONSAFEPATH=1 MNISTTK_WHEEL_DIR=$(WHEEL_DIR) $(PY) -m pytest -q -x -n $(PYTEST_WORKERS) --dist worksteal \
	  -m "not e2e" -k "not every_manifest_input_entry and not litert_batch_file and not search_never_ships" $(QUICK)

bench: wheel
	$(PIP) install -q -c $(VENV)/constraints.txt ".[bench]"
	$(PY) benchmarks/run.py
	$(PY) benchmarks/run.py --targets-only

# ONNX Runtime's CUDA build replaces the CPU one (both write the same `onnxruntime` package:
# never install them side by side). CUDA/cuDNN come from torch's CUDA wheels (preload_dlls).
gpu: venv
	$(PIP) uninstall -q -y onnxruntime onnxruntime-gpu
	$(PIP) install -q onnxruntime-gpu
	$(PY) -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# Every CPU artifact verified on an emulated aarch64 (qemu-user in proot, Debian's arm64 Python, the
# aarch64 wheels), then compared image by image with this machine's run: scripts/arm_check.sh.
# Not part of `make test`: it installs Debian packages (as root) and takes about 20 minutes.
arm-check: wheel
	bash scripts/arm_check.sh

# verify --html in a real headless browser (Debian's chromium; `apt-get install chromium`): a screenshot of
# exported/'s report (make demo first), checked for a visible verdict and table. Not in `make test`.
browser-check: wheel
	$(PY) scripts/browser_check.py $(BROWSER_CHECK_DIR)

# Mutation testing (mutmut) of the gates, compare/outputs, timing, the manifest, sniffing and the runtimes'
# integrity checks (model bytes, external data, logits): its score and survivors
# are printed; a surviving mutant is a gate a broken line would not trip. Minutes, so not in `make test`.
mutation: venv
	$(PIP) install -q "mutmut>=3.3,<4"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 || true
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build mutants *.egg-info
