# Two set-up commands on a fresh machine: `make demo` and `make test`.
# Each target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP_RUN   := $(VENV)/.stamp-runtime
STAMP_DEV   := $(VENV)/.stamp-dev
STAMP_TRAIN := $(VENV)/.stamp-train

.PHONY: demo test faults container train evaluate bench lint score-example clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP_RUN): pyproject.toml setup.py stream_detector/_fastparse.c | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml $(STAMP_RUN)
	$(PIP) install -q -e '.[dev]'
	touch $@

# torch==2.13.0 is the CPU build on local disk; any other spec downloads CUDA.
$(STAMP_TRAIN): pyproject.toml $(STAMP_RUN)
	$(PIP) install -q -e '.[train]'
	touch $@

# textbook fraud first, then fraud as panels sell it with the accounts behind the events
demo: $(STAMP_RUN)
	$(VENV)/bin/stream-detector demo
	$(VENV)/bin/stream-detector demo --market --videos 60

test: $(STAMP_DEV) $(STAMP_TRAIN)
	$(PY) -m pytest -q

# the long fault scenarios (broker frozen 60 s, 5 random SIGKILLs, ...) on real servers
faults: $(STAMP_DEV) $(STAMP_TRAIN)
	$(PY) -m pytest -q -m slow tests/test_faults.py

# the image built and run, compose up and down (starts a container engine if none runs; see .ci/container)
container: $(STAMP_DEV)
	PY=$(PY) bash .ci/container

# SOURCE_DATE_EPOCH pins the artifact's created_at so the rebuilt model is byte-identical.
train: $(STAMP_TRAIN)
	SOURCE_DATE_EPOCH=1767571200 $(VENV)/bin/detector-train all

evaluate: $(STAMP_TRAIN)
	$(VENV)/bin/detector-train evaluate

bench: $(STAMP_RUN)
	$(PY) bench/sustained.py
	$(PY) bench/throughput.py
	$(PY) bench/score_cli.py
	$(PY) bench/stream_quality.py
	$(PIP) install -q 'confluent-kafka>=2.3'  # bench only: the client comparison, not a product dependency
	$(PY) bench/kafka_clients.py

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
