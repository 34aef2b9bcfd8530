# Everything installs into ./.venv. torch goes in first so pip never pulls the multi-GB CUDA build by accident:
# override TORCH (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu128") for a GPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test kernels clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the peer PGD for the cross-check test; --no-deps because it pins an old requests and wants torchvision,
	# neither of which its attacks need
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $@

demo: setup  ## export the default purifier (parity-checked), benchmark every usable backend, purify, train briefly
	$(BIN)/ncis-deploy export --out demo/export --dynamic-hw
	$(BIN)/ncis-deploy bench demo/export --json demo/bench.json --plot demo/bench.png
	$(BIN)/ncis-deploy purify --out demo/purified --backend onnxruntime --model demo/export/purifier.onnx
	$(BIN)/ncis-deploy train --steps 20 --crop 32 --batch 4 --out demo/bsn

test: setup
	$(BIN)/python -m pytest -q

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
	rm -rf $(VENV) demo
