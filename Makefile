# Everything installs into ./.venv. torch goes in first so pip never pulls the multi-GB CUDA build by accident:
# override TORCH (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu128") for a GPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow test-numpy2 kernels clean
# The serve extra (nvidia-pytriton: a real tritonserver for `ncis-deploy serve` and its tests, + tritonclient) pins
# numpy<2, so ./.venv runs numpy 1.26; `make test-numpy2` covers numpy 2 in a second environment without it.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,serve,openvino]'
	# the peer PGD for the cross-check test; --no-deps because it pins an old requests and wants torchvision,
	# neither of which its attacks need
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $@

demo: setup  ## export the default purifier (parity-checked, + a Triton repository), benchmark every usable backend, purify, train briefly
	$(BIN)/ncis-deploy export --out demo/export --dynamic-hw --triton
	$(BIN)/ncis-deploy bench demo/export --json demo/bench.json --plot demo/bench.png
	$(BIN)/ncis-deploy purify --out demo/purified --backend onnxruntime --model demo/export/purifier.onnx
	$(BIN)/ncis-deploy train --steps 20 --crop 32 --batch 4 --out demo/bsn

# `make test` skips the tests marked `slow` (full-size trainings, photos and default export, the model card's numbers,
# the torchattacks cross-check): what each exercises also runs, more cheaply, in the default set, which keeps
# `make test` well inside its time budget on a busy 2-core machine. `make test-slow` runs them (CI: a step of its own).
test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow --runslow

# The default (fast) suite on numpy 2 (what a plain `pip install ncis-deploy` gets), in a second environment without
# the serve extra; the Triton tests skip there (they ran in `make test`).
VENV2 ?= .venv-numpy2
test-numpy2: $(VENV2)/.installed
	$(VENV2)/bin/python -c "import numpy, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) >= 2 else 'numpy 2 expected')"
	$(VENV2)/bin/python -m pytest -q

$(VENV2)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/python -m pip install -q --upgrade pip
	$(VENV2)/bin/python -m pip install -q $(TORCH)
	$(VENV2)/bin/python -m pip install -q -e '.[dev,openvino]'
	$(VENV2)/bin/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $@

# The CUDA smoothing kernel, compiled by nvcc for A100 (sm_80) and H100/H200 (sm_90) with warnings as errors: no GPU
# needed, and a compile error fails (CI runs this before the tests). The TensorRT plugin and the C++ example are
# CMake projects (kernels/, export/cpp/) that say themselves when TensorRT is missing.
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
kernels:
	@command -v $(NVCC) >/dev/null || { echo "make kernels: $(NVCC) not found (install the CUDA toolkit)"; exit 1; }
	@mkdir -p build/kernels
	$(NVCC) -std=c++17 -O3 -Werror all-warnings $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
		-c ncis_deploy/csrc/gaussian_smooth.cu -o build/kernels/gaussian_smooth.o
	@echo "make kernels: gaussian_smooth.cu compiles for $(foreach a,$(CUDA_ARCHS),sm_$(a))"

clean:
	rm -rf $(VENV) $(VENV2) demo
