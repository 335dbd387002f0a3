# Every target creates .venv and installs requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?=
PRESET_FLAG := $(if $(PRESET),--preset $(PRESET),)
FRESH ?=
FRESH_FLAG := $(if $(FRESH),--fresh,)
NPROC ?=
NPROC_FLAG := $(if $(NPROC),--nproc $(NPROC),)
SEED ?=
SEED_FLAG := $(if $(SEED),--seed $(SEED),)

.PHONY: pipeline test play report pretrained dqn record latent pairs action-to-latent neural-gif clean-venv

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

pipeline: $(STAMP)
	$(PY) run_pipeline.py $(PRESET_FLAG) $(FRESH_FLAG) $(NPROC_FLAG) $(SEED_FLAG)

test: $(STAMP)
	$(PY) -m pytest -q tests

dqn: $(STAMP)
	$(PY) 01_train_dqn.py $(PRESET_FLAG)

record: $(STAMP)
	$(PY) 02_record_videos.py $(PRESET_FLAG)

latent: $(STAMP)
	$(if $(NPROC),$(PY) -m torch.distributed.run --standalone --nproc-per-node $(NPROC),$(PY)) 03_train_latent_action.py $(PRESET_FLAG)

pairs: $(STAMP)
	$(PY) 04_collect_action_latent_pairs.py

action-to-latent: $(STAMP)
	$(PY) 05_train_action_to_latent.py $(PRESET_FLAG)

play: $(STAMP)
	$(PY) 06_play_neural_breakout.py

# one page of results with plots from the latest run: runs/report/results.md
report: $(STAMP)
	$(PY) -m common.report

# copy the playable part of checkpoints/ (a finished pipeline run) into pretrained/, the weights shipped in git
pretrained: $(STAMP)
	$(PY) -m common.pretrained

neural-gif: $(STAMP)
	$(PY) 06_play_neural_breakout.py --headless --steps 200 --policy random

clean-venv:
	rm -rf $(VENV)
