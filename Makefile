# `make demo`: pretrain a small ELMo on BBC News, then compare the classifier variants on its topics
# (CPU, about 8 minutes once installed).
# `make test`: ruff over the whole tree, then the whole test suite.
# Both create .venv on first use; torch==2.13.0 is installed first so pip never pulls a CUDA build
# on a CPU machine (on a GPU machine the same pin gives the CUDA wheel).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
DEMO_FINETUNE ?= configs/finetune_demo.yaml
TORCH_PIN := torch==2.13.0
# pytest worker processes for `make test` (each test file runs whole on one worker)
TEST_JOBS ?= 2
# DeepSpeed JIT-compiles a C++ op (its CPU shared-memory collectives) the first time a ZeRO run starts
# on the CPU: 80 to 105 s of compiler time in the middle of the suite. torch keeps one build per
# extension name in one cache folder and rebuilds whenever the sources' path differs, so two checkouts
# on one machine used to rebuild it in turn. One folder per checkout, kept outside it: a second
# `make test` in a checkout reuses its build; a fresh clone (a new venv, new sources) builds it again.
TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/elmo_dist/torch_extensions$(CURDIR)

.PHONY: demo test bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# stamps re-run pip only when the package metadata changes
$(VENV)/.demo-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.dev-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.demo-installed

venv: $(VENV)/.dev-installed

demo: $(VENV)/.demo-installed
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m elmo_dist.data.bbc $(DEMO_DIR)/text
	$(BIN)/elmo-dist prepare $(DEMO_DIR)/text/train.txt --heldout $(DEMO_DIR)/text/heldout.txt \
		--tokenizer moses --min-count 2 --out $(DEMO_DIR)/prepared
	$(BIN)/elmo-dist pretrain configs/demo.yaml data.dir=$(DEMO_DIR)/prepared train.run_dir=$(DEMO_DIR)/pretrain
	$(BIN)/elmo-dist finetune $(DEMO_FINETUNE) bilm.path=$(DEMO_DIR)/pretrain \
		data.train=$(DEMO_DIR)/text/classify/train data.test=$(DEMO_DIR)/text/classify/test \
		train.run_dir=$(DEMO_DIR)/finetune
	@echo "TensorBoard logs: $(DEMO_DIR)  (tensorboard --logdir $(DEMO_DIR))"

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	tests/slurm/install-slurm.sh
	# byte-compile once: where PYTHONDONTWRITEBYTECODE is set (as on CI), each of the suite's hundreds of
	# elmo-dist processes would otherwise compile the package again
	$(BIN)/python -m compileall -q elmo_dist benchmarks
	PATH="$(CURDIR)/$(BIN):$$PATH" TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" \
		$(BIN)/python -m pytest tests -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=25

# `make bench`: the CPU figures of docs/performance.md, as JSON in benchmarks/results/
BENCH := benchmarks/results
bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.bench_pretrain --flavour debug --batch-size 128 --compare-naive --out $(BENCH)/pretrain-debug-cpu.json
	$(BIN)/python -m benchmarks.bench_pretrain --flavour small --batch-size 128 --compare-naive --out $(BENCH)/pretrain-small-cpu.json
	$(BIN)/python -m benchmarks.bench_prepare --out $(BENCH)/prepare.json
	$(BIN)/python -m benchmarks.bench_dist --out $(BENCH)/dist.json
	$(BIN)/python -m benchmarks.bench_finetune --out $(BENCH)/finetune.json

clean:
	rm -rf $(VENV) runs build *.egg-info
