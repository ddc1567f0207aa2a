# Two set-up commands (see README):
#   make quickstart   install adaptome with every domain and run `adaptome quickstart`
#   make test         install adaptome with its test tools and run the whole test suite
# Both create .venv with Python 3.11 (pip only: uv and poetry do not see local wheel caches).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: quickstart test install install-dev interpreters venv clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# R and Racket run the codegen domain's programs (Debian packages; CI runs as root on Debian).
interpreters:
	command -v Rscript >/dev/null && command -v racket >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y r-base-core racket)

install: $(PY) interpreters
	$(PIP) install -e '.[all]'

install-dev: $(PY) interpreters
	$(PIP) install -e '.[all,dev]'

quickstart: install
	$(VENV)/bin/adaptome quickstart --out $(OUT) --overwrite

test: install-dev
	$(PY) -m ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
