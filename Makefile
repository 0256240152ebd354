# Two commands on a fresh clone: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use with CPU torch 2.13.0 and torchvision 0.28.0 pinned in
# the same pip call (docs/environment.md "torch and torchvision": otherwise pip pulls CUDA builds).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facestitch-installed

.PHONY: demo test test-fast lint setup bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0 -e '.[engine,otio,fcpx,ray,farm,dev]'
	# face-alignment declares the GUI OpenCV, which clashes with the headless build.
	$(PY) -m pip install -q --no-deps face-alignment==1.5.0
	$(PY) -m pip install -q -c constraints.txt numba tqdm packaging
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/facestitch demo

test: $(STAMP)
	$(PY) -m pytest -q

# everything but the tests marked slow (about 2 minutes on 2 cores)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/nets.py
	$(PY) bench/pipeline.py

clean-venv:
	rm -rf $(VENV)
