# The whole workflow. `make test` and `make demo` work on a fresh machine: they install
# what is missing, start the local Kafka and Postgres, and go.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/itep_webhooks

.PHONY: install system-deps up down status migrate test test-unit lint format demo bench drills clean

install: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# php-cli is a real PHP receiver for the form-encoding tests ($$_POST['data']); Debian's
# prometheus package gives promtool (the alert rules' tests), its daemon is not wanted here.
system-deps:
	@command -v php >/dev/null 2>&1 || scripts/apt-install.sh php-cli
	@command -v promtool >/dev/null 2>&1 || { scripts/apt-install.sh prometheus \
		&& { systemctl disable --now prometheus >/dev/null 2>&1 || true; }; }

up:
	bash scripts/stack.sh up

down:
	bash scripts/stack.sh down

status:
	bash scripts/stack.sh status

migrate: install up
	$(BIN)/itep-webhooks migrate

test: install up
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install up migrate
	$(BIN)/python scripts/demo.py

clean:
	-bash scripts/stack.sh down
	rm -rf .local $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

bench: install up migrate
	$(BIN)/python scripts/bench.py

# Fault drills (minutes, not a test): `make drills DRILLS_ARGS=--quick`, or `--only crash`.
drills: install up migrate
	$(BIN)/python scripts/drills.py $(DRILLS_ARGS)
