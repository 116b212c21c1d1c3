# trainserve — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# torch comes from pip (never uv/poetry): this exact pair is on local disk on the dev/CI machines.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install data compose-client serve worker migrate test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv with torch and the project (editable)

data: ## install Fashion-MNIST (Debian package) unless TRAINSERVE_DATA_DIR or the package has it
	@if [ -n "$$TRAINSERVE_DATA_DIR" ] || [ -e $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	fi

# The compose-file test parses docker/docker-compose.yml with a Compose client (no engine
# needed): Debian's docker-compose where neither `docker compose` nor `docker-compose` is here.
compose-client:
	@if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; then \
	  true; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q docker-compose; \
	fi

serve: install data ## run the service: API + local worker pool, SQLite in var/ (http://127.0.0.1:8000/docs)
	$(VENV)/bin/trainserve serve

worker: install data ## run a standalone worker against TRAINSERVE_DATABASE_URL
	$(VENV)/bin/trainserve worker

migrate: install ## upgrade the database schema
	$(VENV)/bin/trainserve migrate

test: install data compose-client ## run the whole test suite (SQLite and PostgreSQL at 127.0.0.1:5432)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install data ## the suite without tests marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install data ## LeNet: one epoch, our loop vs the course's DataLoader loop
	$(PY) bench/train_loop.py

clean: ## remove the venv and local state (var/)
	rm -rf $(VENV) var
