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

.PHONY: quickstart test install install-dev venv clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

install: $(PY)
	$(PIP) install -e '.[all]'

install-dev: $(PY)
	$(PIP) install -e '.[all,dev]'

quickstart: install
	$(VENV)/bin/adaptome quickstart --out $(OUT) --overwrite

test: install-dev
	$(PY) -m ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
