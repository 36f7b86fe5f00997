# Two commands do everything from nothing: `make demo` and `make test`.
# Any Python >= 3.11 on PATH works; 3.11 is preferred (the tested one, and torch's files lie on disk for it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# A range that admits the torch 2.14.1 / torchvision 0.29.1 builds on this disk (the tested ones).
TORCH_RANGE := "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
# gpu-check runs from the source tree with whatever interpreter already has torch (a GPU machine
# may have no network, so no install step): the venv's if there is one, else python3.
# Everything the demo shows: training, tests, plots, and the LiteRT and ExecuTorch targets.
EXTRAS ?= train,test,plot,tflite,executorch
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: demo test venv clean bench gpu gpu-check

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Error: no python3 on PATH (set PYTHON=...)"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Error: $(PYTHON) is older than 3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_RANGE)
	printf '%s\n' $(TORCH_RANGE) > $(VENV)/constraints.txt  # the extras must not move torch
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mnisttk data
	$(VENV)/bin/mnisttk pipeline

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[bench]"
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

clean:
	rm -rf $(VENV) build *.egg-info
