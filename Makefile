# dynreg — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PLATFORM ?= tencent
SETTINGS ?= boards/sim/settings/$(PLATFORM).json
INTERP   ?= micropython
UMQTT    ?= frozen

.PHONY: help sim test cloud setup clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

build/deps/.stamp: tools/fetch_deps.py | $(VENV)/.stamp
	$(PY) tools/fetch_deps.py
	touch $@

setup: $(VENV)/.stamp build/deps/.stamp  ## create the venv and fetch device dependencies

sim: setup  ## boot a new simulated board against a fresh local cloud (SETTINGS=, INTERP=micropython|cpython)
	$(PY) tools/sim.py --cloud --fresh --settings $(SETTINGS) --interp $(INTERP) --umqtt $(UMQTT) --state build/sim/board --cloud-state build/sim/cloud

test: setup  ## run every test (what CI runs)
	$(PY) -m pytest -q host_tests

cloud: setup  ## run the cloud emulator in the foreground (ARGS="--host 0.0.0.0 --cert-name 192.168.1.10")
	$(PY) -m tools.cloud --state build/cloud $(ARGS)

clean:  ## remove build output (keeps the venv)
	rm -rf build
