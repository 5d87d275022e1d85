# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install bench demo clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m bot

test: $(STAMP)
	$(PY) -m pytest -q

# A whole guided workshop against a local Discord: no token, no account. Writes ./demo/.
demo: $(STAMP)
	$(PY) -m tests.e2e.demo

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/train.py
	$(PY) bench/predict.py
	$(PY) bench/download.py
	$(PY) bench/cleaning.py
	$(PY) bench/accuracy.py
	$(PY) bench/gpu_cluster.py

clean-venv:
	rm -rf $(VENV)
