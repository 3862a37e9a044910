# `make demo` and `make test` each create .venv when missing and install the project first.
# On these machines pip takes torch 2.14.1 / torchvision 0.29.1 from disk (timm needs the pair).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SEQMIX_DATA ?= $(abspath ../shared/data)
export SEQMIX_DATA

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[all,test]"
	@# Fashion-MNIST for the vision app (Debian package), only when missing and apt-get exists
	if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || \
	  echo "note: dataset-fashion-mnist not installed (needs root); see docs/vision.md"; fi
	touch $@

test: install
	$(PY) -m pytest -q -n 2 --durations=15 tests

demo: install
	$(PY) -m benchmarks.mqar --demo

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
