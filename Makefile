# The two commands a new machine needs:  make demo  and  make test
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench

$(BIN)/chargeplay: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/chargeplay

demo: setup
	$(BIN)/chargeplay info

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/capture_overhead.py
