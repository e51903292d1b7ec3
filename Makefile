# Set-up is two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unitok-installed
CKPT ?= ../shared/parity/vtp_small_default
OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo demo-checkpoint demo-eval demo-speech test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,plot,eval]"
	touch $(STAMP)

install: $(STAMP)

# Pre-train the tiny VTP and an AE-only twin on the embedded shapes (CPU), then evaluate and compare both.
demo: install
	$(VENV)/bin/unitok-demo-pretrain --out $(OUT)

# Encode and decode sample images with a VTP checkpoint (the tiny parity checkpoint unless CKPT=...).
demo-checkpoint: install
	$(VENV)/bin/unitok-demo --ckpt $(CKPT) --out outputs/demo_checkpoint

# Evaluate the two `make demo` checkpoints with unitok-eval on the embedded shapes written as an ImageFolder tree,
# then compare them. LPIPS and rFID need local weights: `make demo-eval RECON="fid_weights=... lpips_weights=..."`.
EVAL_DATA ?= outputs/toy_data
EVAL_OUT ?= outputs/eval
RECON ?= lpips=false fid=false
PROBE ?= crop=64 resize=64 batch_size=256 epochs=20
demo-eval: install
	$(PY) -m unitok.modalities.image.toy $(EVAL_DATA) --train 2400 --val 1200
	$(VENV)/bin/unitok-eval image.zeroshot,image.linear_probe,image.knn,image.reconstruction,image.latent_stats \
		--ckpt $(OUT)/vtp/model --data $(EVAL_DATA) --out $(EVAL_OUT)/vtp $(PROBE) $(RECON) num_samples=2400
	$(VENV)/bin/unitok-eval image.linear_probe,image.knn,image.reconstruction,image.latent_stats \
		--ckpt $(OUT)/ae_only/model --data $(EVAL_DATA) --out $(EVAL_OUT)/ae_only $(PROBE) $(RECON) num_samples=2400
	$(VENV)/bin/unitok-eval compare $(EVAL_OUT)/vtp $(EVAL_OUT)/ae_only --out $(EVAL_OUT)/compare

# Train the tiny speech tokenizer on the embedded espeak-ng corpus (CPU), then evaluate its reconstructions on the
# held-out sentences: figures in $(SPEECH_OUT)/eval/summary.md, original / reconstruction WAV pairs beside them.
SPEECH_OUT ?= outputs/demo_speech
demo-speech: install
	$(VENV)/bin/unitok-train recipes/debug/speech_tiny.yaml run_dir=$(SPEECH_OUT)/run
	$(PY) -m unitok.modalities.speech.data prepare toy $(SPEECH_OUT)/data
	$(VENV)/bin/unitok-eval speech.reconstruction,speech.latent_stats --ckpt $(SPEECH_OUT)/run \
		--data $(SPEECH_OUT)/data --out $(SPEECH_OUT)/eval speech.latent_stats.split=val
	$(VENV)/bin/unitok-eval speech.intelligibility,speech.speaker_similarity --ckpt $(SPEECH_OUT)/run \
		--data $(SPEECH_OUT)/data --out $(SPEECH_OUT)/eval --max-samples 20 \
		speech.intelligibility.asr=pocketsphinx speech.speaker_similarity.sv=resemblyzer

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/vtp_throughput.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
