# The two user-facing commands. Both run scripts/setup.sh first, which installs whatever is
# missing (ffmpeg, uv, the locked venv) and takes about a second when nothing is.
#   make demo   the whole method offline: tiny base, new layers, generation, evaluation (ARGS="--out DIR --seed N --quick")
#   make test   run the test suite (ARGS="-k foundation" to pass pytest options)
SHELL := /bin/bash
VENV ?= $(or $(AUDIOCRAFT_EXT_VENV),$(HOME)/.cache/audiocraft-ext/venv)
export AUDIOCRAFT_EXT_VENV := $(VENV)
ARGS ?=

.PHONY: demo test setup

demo: setup
	$(VENV)/bin/audiocraft-ext demo $(ARGS)

# `make test` also installs Debian's chromium (scripts/setup.sh --browser): one test opens the
# HTML report in a headless browser. `make demo` does not need it.
test:
	@bash scripts/setup.sh --browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile $(ARGS)

# EXTRAS="tensorboard wandb metrics": optional extras of pyproject.toml, kept for every later `make`.
setup:
	@bash scripts/setup.sh $(if $(EXTRAS),--extras "$(EXTRAS)")
