# The whole workflow. `make test` and `make demo` work on a fresh machine: they install
# what is missing, start the local Kafka and Postgres, and go.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/itep_webhooks

.PHONY: install system-deps up down status cluster-up cluster-down cluster-status migrate test \
	test-unit lint format demo bench drills clean

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

# A local 3-broker KRaft cluster (127.0.0.1:19092,19093,19094; replication factor 3,
# min.insync.replicas 2) beside the one-node stack, for cluster tests and drills. Postgres
# still comes from `make up`. One broker at a time: scripts/cluster.sh stop|kill|start N.
cluster-up:
	bash scripts/cluster.sh up

cluster-down:
	bash scripts/cluster.sh down

cluster-status:
	bash scripts/cluster.sh status

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
	-bash scripts/cluster.sh down
	-bash scripts/stack.sh down
	rm -rf .local $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# The benchmark (minutes; figures into BENCHMARKS.md): `make bench`, or `make bench QUICK=1`
# for a small run of every scenario (its own section), or `BENCH_ARGS='--only fast'`.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP) up migrate
	BENCH_COMMAND='make bench$(if $(QUICK), QUICK=1)' \
		$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# Fault drills (minutes, not a test): `make drills DRILLS_ARGS=--quick`, or `--only crash`.
drills: install up migrate
	$(BIN)/python scripts/drills.py $(DRILLS_ARGS)
