# synthmri: `make demo` runs the whole pipeline on phantom data; `make test` runs the tests.
# Both bootstrap .venv from the pinned lock file first.

PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
# Empty: the CPU build (this machine's local wheel or PyPI's). On a GPU machine pick a CUDA
# build, e.g. `make demo TORCH_INDEX=https://download.pytorch.org/whl/cu128`.
TORCH_INDEX   ?=
PYTEST_ARGS   ?=

BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test test-slow mlflow-ui pipelines images clean clean-outputs

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: with no torch present, a dependency would pull the several-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)  ## create .venv with the pinned dependencies

demo: $(STAMP)  ## run the demo pipeline (dvc repro on phantom data), then summarise
	@test -d .git || { echo "make demo needs a git checkout (DVC tracks outputs in git)"; exit 1; }
	dvc repro
	synthmri summary

test: $(STAMP)  ## run the test suite (fast tests; slow ones: make test-slow)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)  ## run the slow tests too
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

mlflow-ui: $(STAMP)  ## open the MLflow UI on the demo's tracking store (http://127.0.0.1:5000)
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

pipelines: $(STAMP)  ## compile the Kubeflow pipelines to pipelines-out/
	synthmri pipeline compile --out pipelines-out

# Images (docker/Dockerfile): tagged with pyproject's version, the tags components/common.py uses.
DOCKER           ?= docker
IMAGE_REPOSITORY ?= ghcr.io/synthmri/synthmri
IMAGE_VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_BUILD      := $(DOCKER) build -f docker/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) \
	--build-arg TORCH_VERSION=$(TORCH_VERSION) \
	--build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown)

images:  ## build the CPU and CUDA images (ghcr.io/synthmri/synthmri:<version>[-cuda])
	$(IMAGE_BUILD) --build-arg FLAVOR=cpu -t $(IMAGE_REPOSITORY):$(IMAGE_VERSION) .
	$(IMAGE_BUILD) --build-arg FLAVOR=cuda -t $(IMAGE_REPOSITORY):$(IMAGE_VERSION)-cuda .

clean-outputs:  ## delete pipeline outputs and the local MLflow store (keeps .venv)
	rm -rf data models outputs mlruns mlartifacts mlflow.db pipelines-out dvc.lock

clean: clean-outputs  ## delete everything generated, .venv included
	rm -rf $(VENV) .pytest_cache
