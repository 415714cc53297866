# Every target installs what it needs into ./.venv first (torch==2.13.0 CPU build when there is no CUDA).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser docs demo test test-fast bench bench-data bench-train bench-sweep bench-generation bench-locality clean

# pip's output goes to $(VENV)/install.log (its tail is shown when an install fails)
$(STAMP): pyproject.toml
	@echo "make: installing into $(VENV) (pip's output: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install -q --upgrade pip && \
	   if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA found: torch comes from the package index"; \
	   else \
		$(BIN)/python -m pip install -q "torch==2.13.0"; \
	   fi && \
	   $(BIN)/python -m pip install -q -e ".[dev]" ) > $(VENV)/install.log 2>&1 \
		|| (tail -n 30 $(VENV)/install.log; echo "make: install failed (full log: $(VENV)/install.log)"; exit 1)
	@touch $(STAMP)

install: $(STAMP)

# headless Chromium for the report.html test (Debian's package), installed once when missing
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends chromium >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null) \
		|| echo "make: could not install chromium (apt-get as root); tests/unit/tracking/test_html.py will fail"

docs: $(STAMP)
	$(BIN)/python -m orchestrator.config_doc docs/configuration.md

demo: $(STAMP)
	@$(BIN)/moss demo

# the fast tests in 2 processes (pytest-xdist), then the slow ones (real Ray / MLflow / gloo) one at a time
test: test-fast
	$(BIN)/python -m pytest -q tests -m slow

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 tests -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/adapter_overhead.py

bench-data: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

bench-sweep: $(STAMP)
	$(BIN)/python benchmarks/sweep_efficiency.py

bench-generation: $(STAMP)
	$(BIN)/python benchmarks/generation.py

bench-locality: $(STAMP)
	$(BIN)/python benchmarks/locality.py

clean:
	rm -rf $(VENV) demo_out benchmarks/results report generated eval .pytest_cache
