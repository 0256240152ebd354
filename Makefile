# Two commands on a fresh clone: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use with CPU torch 2.13.0 and torchvision 0.28.0 pinned in
# the same pip call (docs/environment.md "torch and torchvision": otherwise pip pulls CUDA builds).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facestitch-installed

.PHONY: demo test test-fast lint setup browser bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0 -e '.[engine,otio,fcpx,ray,farm,panel,dev]'
	# face-alignment declares the GUI OpenCV, which clashes with the headless build.
	$(PY) -m pip install -q --no-deps face-alignment==1.5.0
	$(PY) -m pip install -q -c constraints.txt numba tqdm packaging
	touch $(STAMP)

setup: $(STAMP) browser

# The panel's browser tests (tests/test_panel_browser.py) drive Debian's chromium
# through its chromedriver, never a browser or driver downloaded by Selenium.
# Installed when missing and apt-get can run (root: CI, a fresh Debian 12 clone);
# otherwise says what to install (the tests then skip, saying why).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: $$(chromium --version 2>/dev/null | head -n 1), chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	else \
		echo "browser: chromium and chromium-driver are not installed; as root: apt-get install -y --no-install-recommends chromium chromium-driver (the browser tests skip without them)"; \
	fi

demo: $(STAMP)
	$(VENV)/bin/facestitch demo

test: $(STAMP)
	$(PY) -m pytest -q

# everything but the tests marked slow (about 2 minutes on 2 idle cores)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/nets.py
	$(PY) bench/pipeline.py

clean-venv:
	rm -rf $(VENV)
