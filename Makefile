# cdk-trn: the two commands are `make synth` and `make test`. Both work from a fresh clone,
# offline except for the package registries, with no AWS credentials.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Offline synth: no credentials, no instance-metadata probe, no notices, no Node EOL banner.
export PATH := $(BIN):$(CURDIR)/node_modules/.bin:$(PATH)
export AWS_EC2_METADATA_DISABLED := true
# jsii names the variable after the end-of-life check; the value lists the silenced major versions.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true

.PHONY: synth test lint typecheck unit bench deploy clean compat host-python local-cluster local-cluster-replace local-cluster-down

synth: $(VENV)/.runtime node_modules/.installed
	rm -rf cdk.out
	cdk synth --quiet --no-notices
	python -m cdk_trn.compliance cdk.out

test: $(VENV)/.test lint typecheck unit

lint: $(VENV)/.test
	ruff check .
	ruff format --check .

typecheck: $(VENV)/.test
	mypy cdk_trn cdk_trn_runtime stacks app.py

# In parallel (pytest-xdist, a worker per CPU): each module is one unit of work, the longest
# modules first (tests/conftest.py). TEST_WORKERS=0: serially.
TEST_WORKERS ?= auto
unit: $(VENV)/.test
	pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# AL2023's system python3 is 3.9, and the vault host and the controller run some runtime modules
# with it: the tests run those with a real 3.9 (tests/support/host_python.py), pyenv's from this
# machine kind's image, with botocore as the vault host's python3-botocore (pinned: the newest
# release that still installs on 3.9 when this was written). CI (.ci/run) makes it before
# `make test`; without it those tests skip outside CI and fail in CI.
PYTHON39 ?= $(firstword $(wildcard /root/.pyenv/versions/3.9.*/bin/python3.9) $(shell command -v python3.9))
HOST39 := .venv-host39
host-python: $(HOST39)/.installed
$(HOST39)/.installed:
	@test -n "$(PYTHON39)" || { echo "host-python: no python3.9 (pyenv install 3.9)" >&2; exit 1; }
	$(PYTHON39) -m venv $(HOST39)
	$(HOST39)/bin/pip install --quiet --disable-pip-version-check 'botocore==1.42.97'
	touch $@

# The default app synthesized (all packs, cfn-lint) with the oldest aws-cdk-lib pyproject admits.
COMPAT := .venv-oldest
compat: node_modules/.installed
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install --quiet -c constraints-oldest.txt -e .
	rm -rf cdk.out.oldest
	CDK_OUTDIR=cdk.out.oldest $(COMPAT)/bin/python app.py
	$(COMPAT)/bin/python -m cdk_trn.compliance cdk.out.oldest
	$(COMPAT)/bin/pip show aws-cdk-lib | grep '^Version'

# The real deployment: needs AWS credentials (and Docker for the image assets).
deploy: $(VENV)/.runtime node_modules/.installed
	cdk deploy --all $(CONTEXT)

bench: $(VENV)/.test
	python benchmarks/synth_scaling.py
	python benchmarks/synth_speed.py
	python benchmarks/acceptance_cpu.py

# The local twin of the cloud's Slurm (cdk_trn_runtime/slurm/twin): a controller and NODES dynamic
# nodes, each in namespaces of its own on a private bridge, in .local-cluster/. `make local-cluster`
# prints `export SLURM_CONF=...`; on a running twin NODES=<n> resizes it (as `cdk deploy -c nodes=<n>`)
# and without NODES it keeps the count and replaces lost nodes. Needs root; installs the packages.
LOCAL_CLUSTER := $(CURDIR)/.local-cluster
TWIN_PACKAGES := slurm-wlm munge iproute2 util-linux iptables nftables
local-cluster: $(VENV)/.test
	@if [ "$$(id -u)" -ne 0 ]; then echo "local-cluster: the twin needs root (namespaces, slurmd)" >&2; exit 1; fi
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v nft >/dev/null \
	  || ! command -v iptables >/dev/null; then \
	  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TWIN_PACKAGES) >&2; \
	fi
	@python -m cdk_trn_runtime.slurm.local up --dir $(LOCAL_CLUSTER) $(if $(NODES),--nodes $(NODES))

# A lost instance: NODE's link cut and every process in its namespaces SIGKILLed, then a
# replacement on a new address (prints `replacement: <name>`).
local-cluster-replace: $(VENV)/.runtime
	@test -n "$(NODE)" || { echo "usage: make local-cluster-replace NODE=<name>" >&2; exit 2; }
	@python -m cdk_trn_runtime.slurm.local replace --node $(NODE) --dir $(LOCAL_CLUSTER)

local-cluster-down: $(VENV)/.runtime
	python -m cdk_trn_runtime.slurm.local down --dir $(LOCAL_CLUSTER)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf cdk.out cdk.out.oldest $(COMPAT) $(VENV) $(HOST39) node_modules .pytest_cache .mypy_cache .ruff_cache
