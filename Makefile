# shrinkml: every stage of the pipeline is a target; `make pipeline` runs them all in order.
SHELL := /bin/bash
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORPUS := data/synthetic

BASELINE := runs/baseline
SENSITIVITY_UTTERANCES ?= 100
SENSITIVITY := runs/sensitivity/sensitivity.json
CONDENSED := runs/condense/condensed.txt
TIMED := $(PY) scripts/timed.py
# resume a run directory's interrupted training: only from a last.ckpt newer than the run's input $(2)
resume = $(if $(shell test $(1)/checkpoints/last.ckpt -nt $(2) && echo y),ckpt_path=$(1)/checkpoints/last.ckpt,)

.PHONY: setup test lint data corpus prepare baseline sensitivity manual condense search search-conservative \
	search-random retrain sensitivity-sparsity prune budget quantize export compare pipeline bench clean-cache

## setup: virtual env with the project and its dev extras, plus the system check for the corpus text
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -n "$(PYTHON_BIN)" || { echo "setup: no python3.11 or python3 on PATH"; exit 1; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	bash scripts/setup_system.sh
	touch $(STAMP)

## test: the fast test suite (installs everything first when needed)
test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

## data: the embedded corpus, checked, with its tokenizer and feature cache
data: setup $(CORPUS)/corpus.json prepare
corpus: $(CORPUS)/corpus.json
$(CORPUS)/corpus.json: conf/corpus/synthetic.yaml | $(STAMP)
	$(PY) scripts/make_corpus.py
	$(PY) scripts/check_corpus.py $(CORPUS)
prepare: $(CORPUS)/corpus.json
	$(PY) scripts/prepare_data.py

## baseline: train the baseline ASR model (20 epochs, about 30 minutes on 2 CPU cores); an interrupted run resumes
baseline: $(BASELINE)/summary.json
$(BASELINE)/summary.json: | $(CORPUS)/corpus.json
	$(TIMED) baseline -- $(PY) train.py +experiment=baseline $(call resume,$(BASELINE),$(CORPUS)/corpus.json)

## sensitivity: single-target sensitivity of the baseline (Fig. 2)
sensitivity: $(SENSITIVITY)
$(SENSITIVITY): $(BASELINE)/summary.json
	$(TIMED) sensitivity -- $(PY) scripts/sensitivity.py max_utterances=$(SENSITIVITY_UTTERANCES)

## manual: naive and guided manual baselines at 1.2x, 2x, 3.7x (Fig. 4)
manual: runs/manual/manual.json
runs/manual/manual.json: $(SENSITIVITY)
	$(TIMED) manual -- $(PY) scripts/manual_baselines.py

## condense: the condensed proxy set of the dev split (Listing 1, Fig. 3)
condense: $(CONDENSED)
$(CONDENSED): $(BASELINE)/summary.json
	$(TIMED) condense -- $(PY) scripts/condense.py

## search: search.py's default searcher (conf/search.yaml, the one place that names it: the best mean at equal
## numbers of decodes at a_t = 3.7, RESULTS.md; SEARCH=aggressive runs the paper's RL instead) and the random
## search over feasible schemes as its control, same budget and space; an interrupted search resumes where it
## stopped when run again (state of an older baseline is kept aside). SPACE=joint (per target a rank, a sparsity
## or both), BY=params|macs|latency, TARGET=<a_t> and DECODES=<budget in decodes> choose the space, estimate, target
## and budget:
##   make search SPACE=joint BY=latency TARGET=2.5 && make retrain SPACE=joint BY=latency TARGET=2.5
# the searcher of conf/search.yaml's defaults list (`- search: NAME`), named nowhere else
SEARCH ?= $(shell sed -n 's/^  - search: *\([A-Za-z0-9_]*\).*/\1/p' conf/search.yaml)
SPACE ?=
BY ?=
TARGET ?=
DECODES ?=
# a search's directory name: the searcher, then each choice made here (none: the searcher's own name)
search_name = $(1)$(if $(SPACE),_$(SPACE))$(if $(BY),_$(BY))$(if $(TARGET),_$(TARGET))$(if $(DECODES),_d$(DECODES))
search_args = $(if $(SPACE)$(BY)$(TARGET)$(DECODES),search.name=$(call search_name,$(1))) \
	$(if $(SPACE),search.space.kind=$(SPACE)) $(if $(BY),by=$(BY)) $(if $(TARGET),search.target_speedup=$(TARGET)) \
	$(if $(DECODES),search.max_decodes=$(DECODES))
SEARCH_NAME := $(call search_name,$(SEARCH))
CONTROL_NAME := $(call search_name,random_feasible)
# a search chosen here, its control and its retraining share one W&B group: the search's directory name
GROUP := $(if $(filter $(SEARCH_NAME),$(SEARCH)),,logger.wandb.group=$(SEARCH_NAME))
search: runs/search/$(SEARCH_NAME)/report.json runs/search/$(CONTROL_NAME)/report.json
runs/search/$(SEARCH_NAME)/report.json: $(SENSITIVITY) $(CONDENSED)
	$(TIMED) "search $(SEARCH_NAME)" -- $(PY) search.py $(strip search=$(SEARCH) $(call search_args,$(SEARCH)) $(GROUP) \
		on_stale=restart)
ifneq ($(CONTROL_NAME),$(SEARCH_NAME))
runs/search/$(CONTROL_NAME)/report.json: $(SENSITIVITY) $(CONDENSED)
	$(TIMED) "search $(CONTROL_NAME)" -- $(PY) search.py $(strip search=random_feasible \
		$(call search_args,random_feasible) $(GROUP) on_stale=restart)
endif
runs/search/%/report.json: $(SENSITIVITY) $(CONDENSED)
	$(TIMED) "search $*" -- $(PY) search.py search=$* on_stale=restart
# Optuna TPE at a_t 1.2 (RESULTS.md); SEARCH_CONSERVATIVE=conservative runs the paper's RL (no comment after the
# value: make would keep the spaces before it in the name)
SEARCH_CONSERVATIVE ?= conservative_tpe
search-conservative: runs/search/$(SEARCH_CONSERVATIVE)/report.json

## retrain: fine-tune the search's scheme (SEARCH, SPACE, BY, TARGET as make search: runs/retrain_automl for the
## default search, else runs/retrain_<search directory>) and the guided manual 3.7x scheme, and train the dense
## baseline on for the same budget (the dense control, conf/finetune); a scheme's sparsities are pruned on Zhu &
## Gupta's schedule (conf/prune/default.yaml); a missing or stale scheme stops with the stage to run; an
## interrupted run resumes
RETRAIN_NAME := $(if $(filter $(SEARCH_NAME),$(SEARCH)),retrain_automl,retrain_$(SEARCH_NAME))
retrain: runs/$(RETRAIN_NAME)/summary.json runs/retrain_guided/summary.json runs/retrain_dense/summary.json
runs/$(RETRAIN_NAME)/summary.json: runs/search/$(SEARCH_NAME)/report.json
	$(TIMED) "$(RETRAIN_NAME)" -- $(PY) train.py +experiment=retrain task_name=$(RETRAIN_NAME) $(GROUP) \
		compress.scheme=runs/search/$(SEARCH_NAME)/best_scheme.json \
		$(call resume,runs/$(RETRAIN_NAME),runs/search/$(SEARCH_NAME)/best_scheme.json)
runs/retrain_guided/summary.json: runs/manual/manual.json
	$(TIMED) "retrain guided" -- $(PY) train.py +experiment=retrain task_name=retrain_guided \
		compress.scheme=runs/manual/schemes/guided-3.7x.json $(call resume,runs/retrain_guided,runs/manual/schemes/guided-3.7x.json)
runs/retrain_dense/summary.json: $(BASELINE)/summary.json
	$(TIMED) "retrain dense" -- $(PY) train.py +experiment=retrain_dense $(call resume,runs/retrain_dense,$(BASELINE)/summary.json)

## sensitivity-sparsity: each target alone magnitude-pruned at 50-95% (one-shot), to choose per-target sparsities
sensitivity-sparsity: runs/sensitivity/sensitivity_sparsity.json
runs/sensitivity/sensitivity_sparsity.json: $(BASELINE)/summary.json
	$(TIMED) "sensitivity sparsity" -- $(PY) scripts/sensitivity.py kind=sparsity max_utterances=$(SENSITIVITY_UTTERANCES)

## prune: the baseline pruned while fine-tuned with the retraining budget (about 22 minutes each, docs/pruning.md),
## magnitude and CSP at each sparsity, then the table (scripts/prune_report.py); an interrupted run resumes
PRUNE_METHODS := magnitude csp
PRUNE_SPARSITIES := 0.5 0.7 0.8 0.9
PRUNE_BLOCK := csp_0.8 magnitude_0.8   # 4x1 blocks as well: the pattern the sparse kernels run fastest (RESULTS.md);
                                       # MoChA's 1x256 energy vector chunk_v stays dense (4 does not divide 1)
prune: $(foreach m,$(PRUNE_METHODS),$(foreach s,$(PRUNE_SPARSITIES),runs/prune_$(m)_$(s)/summary.json)) \
		$(foreach r,$(PRUNE_BLOCK),runs/prune_$(r)_b4x1/summary.json) runs/retrain_dense/summary.json
	$(PY) scripts/prune_report.py
runs/prune_%_b4x1/summary.json: $(BASELINE)/summary.json
	$(TIMED) "prune $*_b4x1" -- $(PY) train.py +experiment=prune task_name=prune_$*_b4x1 \
		compress.method=$(word 1,$(subst _, ,$*)) compress.sparsity=$(word 2,$(subst _, ,$*)) compress.pattern=block \
		"compress.block=[4,1]" "compress.exclude=[ctc_head,decoder.attention.chunk_v]" \
		$(call resume,runs/prune_$*_b4x1,$(BASELINE)/summary.json)
runs/prune_%/summary.json: $(BASELINE)/summary.json
	$(TIMED) "prune $*" -- $(PY) train.py +experiment=prune compress.method=$(word 1,$(subst _, ,$*)) \
		compress.sparsity=$(word 2,$(subst _, ,$*)) $(call resume,runs/prune_$*,$(BASELINE)/summary.json)

## budget: every compression method at 1/3.7 and 1/5 of the baseline's parameters with equal training time, one
## table and figures (runs/budget/budget.md, docs/budget.md); run again to resume (finished rows are kept)
budget: $(SENSITIVITY) $(CONDENSED)
	$(TIMED) budget -- $(PY) scripts/budget.py

## quantize: the retrained AutoML model in 8 bits: size, WER and measured speed-up
quantize: runs/quantize/automl/report.json
runs/quantize/automl/report.json: runs/retrain_automl/summary.json
	$(TIMED) quantize -- $(PY) scripts/quantize.py

## export: the retrained search result (SEARCH, SPACE, BY, TARGET as make retrain) as ONNX and as TorchScript with the
## C++ kernels (runs/export/<retrain name>/model), checked for log-probability parity and test WER against PyTorch
export: runs/export/$(RETRAIN_NAME)/report.json
runs/export/$(RETRAIN_NAME)/report.json: runs/$(RETRAIN_NAME)/summary.json
	$(TIMED) export -- $(PY) scripts/export.py ckpt=runs/$(RETRAIN_NAME)/checkpoints/best.ckpt name=$(RETRAIN_NAME)

## compare: one table (Markdown, CSV) and figures from the W&B runs of every stage
compare: setup
	$(PY) scripts/compare_runs.py

## pipeline: every stage in order, each skipped when its result is there and up to date
pipeline: data baseline sensitivity condense search manual retrain quantize export compare

## bench: the benchmark scripts (print their numbers)
bench: setup
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/asr_speed.py $(if $(wildcard $(BASELINE)/checkpoints/best.ckpt),--ckpt $(BASELINE)/checkpoints/best.ckpt,)
	$(PY) benchmarks/measured_speedup.py --threads 1 $(if $(wildcard $(BASELINE)/checkpoints/best.ckpt),--ckpt $(BASELINE)/checkpoints/best.ckpt,)

clean-cache:
	rm -rf cache/features
