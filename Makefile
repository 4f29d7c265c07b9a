# The two commands a new machine needs:  make demo  and  make test
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_TEST_PACKAGES := chromium  # opens the HTML report in the report tests

.PHONY: setup demo test test-packages bench

$(BIN)/chargeplay: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/chargeplay

demo: setup
	$(BIN)/chargeplay demo

test-packages:
	@missing=$$(for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup test-packages
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/replay_speed.py
