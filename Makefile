# modalfuse: `make run` (install, data, train, serve) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MLFLOW_PORT ?= 5000
# The real-data smoke test keeps its own data folder (and download cache) in the repo.
SMOKE_DIR := $(CURDIR)/.cache/smoke
# The pinned mermaid-cli of docs/tools/package.json, installed here (git-ignored) with the system Chromium.
NODE_DIR := .cache/node
MMDC := $(NODE_DIR)/node_modules/.bin/mmdc

.PHONY: run install install-dev lock data train serve mlflow-ui pipeline test unit unit-all smoke lint clean help browser-deps container-test compose-test report-img report-pdf

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Installs come from the lock (requirements/*.txt, made by `make lock` from pyproject.toml's
# ranges): every package pinned with its hash, nothing resolved at install time. `run` is what
# training, serving, the UI, the registry and monitoring need; `dev` adds the test and lint
# tools (and Ray) on top. The project itself goes in last, editable, built offline by the
# locked setuptools.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --require-hashes --no-deps
$(VENV)/.installed-%: requirements/%.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements/$*.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed-run ## create .venv with what running needs (requirements/run.txt)

install-dev: install $(VENV)/.installed-dev ## add the test, lint and report tools (requirements/dev.txt)

lock: install-dev ## re-resolve requirements/*.txt from pyproject.toml (keeps pins; UPGRADE=1 takes newer ones)
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

data: install ## fetch the pinned sources, build and split the Pokémon dataset
	$(BIN)/modalfuse data build
	$(BIN)/modalfuse data split

train: install ## train the default model on the built-in dataset
	$(BIN)/modalfuse train

serve: install ## start the API on $(HOST):$(PORT)
	$(BIN)/modalfuse serve --host $(HOST) --port $(PORT)

run: data train serve ## everything: install, data, train, serve

mlflow-ui: install ## MLflow UI (runs, registry) on the embedded store at $(HOST):$(MLFLOW_PORT)
	$(BIN)/modalfuse mlflow-ui --host $(HOST) --port $(MLFLOW_PORT)

pipeline: install ## the DVC pipeline (dvc.yaml): reruns only the stages whose inputs changed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

browser-deps: ## Debian's Chromium for the UI browser test (no-op when present)
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# pytest on tests/, two processes, with extra arguments $(1); status 5 (nothing collected) passes.
pytest_suite = $(BIN)/python -m pytest -q -n 2 --dist loadfile $(1) tests; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

# The `slow` marker (pyproject.toml) is on the tests that start servers, browsers, Ray or moto,
# build a venv or take over 20 s on 2 cores: `unit` leaves them out, `unit-all` runs them too.
unit: install-dev ## the fast pytest suite: every test not marked slow (no network)
	$(call pytest_suite,-m "not slow")

unit-all: install-dev browser-deps ## the whole pytest suite, slow tests included (no network)
	$(call pytest_suite,)

smoke: install-dev ## end-to-end on the real pinned sources with quick settings
	MODALFUSE_DATA_DIR=$(SMOKE_DIR) $(BIN)/modalfuse data build
	MODALFUSE_DATA_DIR=$(SMOKE_DIR) $(BIN)/modalfuse data split
	MODALFUSE_DATA_DIR=$(SMOKE_DIR) $(BIN)/modalfuse train --rounds 60
	MODALFUSE_DATA_DIR=$(SMOKE_DIR) $(BIN)/python scripts/smoke_check.py

test: lint unit-all smoke ## lint, every unit/data/model test (slow ones too), then the real-data smoke

container-test: install-dev ## hadolint, debootstrap base, build + run the serve image with podman, call it
	docker/container-test.sh $(SMOKE_DIR)/models/pokemon/latest

compose-test: install-dev ## compose.yaml up with podman: train + register into its MLflow, serve @champion, check Prometheus
	SMOKE_DIR=$(SMOKE_DIR) docker/compose-test.sh

# checkov in a venv of its own (its pins clash with the project's), from its own lock.
CHECKOV := .cache/checkov/bin/checkov
$(CHECKOV): requirements/checkov.txt
	$(PYTHON) -m venv --clear .cache/checkov
	.cache/checkov/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements/checkov.txt
	touch $(CHECKOV)

lint: install-dev $(CHECKOV) ## ruff, mypy, the import contract (pyproject.toml) and checkov on deploy/aws (offline)
	$(BIN)/ruff check src tests scripts
	$(BIN)/mypy src/modalfuse
	$(BIN)/lint-imports
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) -d deploy/aws --framework terraform --skip-download --quiet --compact

$(MMDC): docs/tools/package.json docs/tools/package-lock.json
	mkdir -p $(NODE_DIR)
	cp docs/tools/package.json docs/tools/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $(MMDC)

report-img: install-dev browser-deps $(MMDC) ## Mermaid diagrams of the docs -> docs/img/*.svg|png, plus their image lines
	@TIMEFORMAT='report-img took %R s'; time $(BIN)/python scripts/render_diagrams.py

report-pdf: report-img ## docs/report.pdf and docs/informe.pdf (offline HTML printed by Chromium)
	@TIMEFORMAT='report-pdf took %R s (with its report-img prerequisite: see above)'; \
	time $(BIN)/python scripts/report_pdf.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
