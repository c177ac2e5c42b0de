# The README's commands. Everything installs into .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FILM ?= films/lantern/film.toml
STAMP := $(VENV)/.installed

.PHONY: film test lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

film: $(STAMP)
	$(BIN)/runner render $(FILM)

# Four pytest-xdist workers even on two cores: many tests wait on loopback jobs, not the CPU.
# loadgroup keeps tests that share a module's render (xdist_group) in one worker.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench
	$(BIN)/mypy runner

# BENCH="verify hosted" measures those sections alone (bench/run.py --help lists them).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH)

# Hundreds of random and hostile films through `plan`, a few through `render` (tests/fuzz.py);
# findings go into BENCHMARKS.md's Fuzz section. `make test` runs 20 of them.
FUZZ_CASES ?= 300
FUZZ_RENDERS ?= 20
fuzz: $(STAMP)
	RUNNER_FUZZ_CASES=$(FUZZ_CASES) RUNNER_FUZZ_RENDERS=$(FUZZ_RENDERS) \
		$(BIN)/python -m pytest -q -n 4 tests/test_fuzz.py

clean:
	rm -rf $(VENV) .cache
