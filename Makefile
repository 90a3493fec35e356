# canvoy: `make demo` and `make test` are all a new user needs; both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian packages the tests and the demo run for real: the broker, its stock clients, NATS.
SYSTEM_PACKAGES := mosquitto mosquitto-clients nats-server

.PHONY: setup system-packages test lint demo bench chaos clean

setup: system-packages $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "canvoy needs Python >= 3.11; this is $$($(PYTHON) --version). Install python3.11 or newer and run 'make PYTHON=python3.11 setup'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	@touch $(STAMP)

# Installs what is missing with apt-get (through sudo when not root); says what to do elsewhere.
system-packages:
	@missing=""; \
	have() { command -v "$$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$$1" ] || [ -x "/usr/local/sbin/$$1" ]; }; \
	have mosquitto || missing="$$missing mosquitto"; \
	have mosquitto_pub || missing="$$missing mosquitto-clients"; \
	have nats-server || missing="$$missing nats-server"; \
	$(PYTHON) -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "canvoy needs:$$missing. This system has no apt-get: install Mosquitto 2.x (broker and clients), nats-server and Python venv support with your package manager, then run make again." >&2; \
	    exit 1; \
	  fi; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy tests bench

demo: setup
	$(BIN)/python -m canvoy demo

bench: setup
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/bridge.py
	$(BIN)/python bench/renewal.py

# Not part of 'make test': minutes of SIGKILLs against every process (README, "The chaos run").
# More: make chaos CHAOS_ARGS='--seed 7 --agent-kills 2000'
CHAOS_ARGS ?=
chaos: setup
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-run
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
