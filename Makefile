# `make demo` and `make test` each create .venv if missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

# The demo study (6 algorithms x 2 label skews x 3 seeds on offline digits; FINISHED cells are skipped on a
# re-run), its leaderboard with confidence intervals and paired tests, figures as PNG/PDF/SVG, then where to look.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fedharness study runs/studies/demo.yaml --no-table
	HF_HUB_OFFLINE=1 $(BIN)/fedharness leaderboard --experiment demo --study demo
	@echo "Figures and tables: exports/demo/ (leaderboard.html opens in any browser)."
	@echo "MLflow UI: $(BIN)/fedharness ui, then open http://127.0.0.1:5000/#/?workflowType=machine_learning (Ctrl-C stops it)"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -q

# The tests marked slow (real multi-process scenarios: concurrent runs, killed drivers, two-node clusters).
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check harness algorithms partitions tests bench

clean:
	rm -rf mlruns .fedharness .cache .pytest_cache
