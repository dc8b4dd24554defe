# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all lint proto images clean

setup:
	@bash scripts/setup.sh

# Main job on the embedded default data and models, ending in real gRPC answers.
demo: setup
	$(PY) -m llmrec demo

# Fast suite (tiny random models); `make test-all` adds the slow tests with real weights.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

proto: setup
	$(PY) -m server.proto_gen

# Container images (serve, train, GPU) with podman or docker; on a fresh root Debian machine --setup installs
# podman first. Settings (base image, CA bundle, wheel folder): scripts/build-images.sh --help.
images:
	bash scripts/build-images.sh --setup

clean:
	rm -rf work
