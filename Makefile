# distill-lab — `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use (idempotent: re-runs only reinstall when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Without an NVIDIA GPU, take the CPU build of torch first (a bare `torch` pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
DATA_DIR ?= $(or $(DISTILL_LAB_DATA_DIR),../shared/data)

.PHONY: install demo run test results ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: keeping pip's default torch build"; \
	else \
		$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distill-lab study run studies/quickstart.yaml

run: $(STAMP)
	$(BIN)/distill-lab run studies/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/distill-lab ui

clean:
	rm -rf .distill_lab mlflow.db mlruns mlartifacts
