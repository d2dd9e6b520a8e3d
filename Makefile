# dynreg — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PLATFORM ?= tencent
SETTINGS ?= boards/sim/settings/$(PLATFORM).json
INTERP   ?= micropython
UMQTT    ?= frozen

# Real boards (docs/factory.md): BOARD is a directory of boards/ with a board.json.
BOARD     ?=
PARTITION ?= default
PORT      ?=
FIRMWARE  ?=
NVS       ?=
FORCE     ?=
BAUD      ?= 460800
CSV       ?=
OUT       ?= build/nvs
FILE      ?=

.PHONY: help sim test soak cloud setup clean flash deploy nvs-backup nvs-restore provision bench mutate hil

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.stamp: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

build/deps/.stamp: tools/fetch_deps.py | $(VENV)/.stamp
	$(PY) tools/fetch_deps.py
	touch $@

# ThingsBoard's SDK for its fidelity test, beside the venv (requirements-tbsdk.txt says why)
build/tbsdk/.stamp: requirements-tbsdk.txt | $(VENV)/.stamp
	rm -rf build/tbsdk
	$(PY) -m pip install -q --no-deps --target build/tbsdk -r requirements-tbsdk.txt
	touch $@

setup: $(VENV)/.stamp build/deps/.stamp build/tbsdk/.stamp  ## create the venv and fetch device dependencies

sim: setup  ## boot a new simulated board against a fresh local cloud (SETTINGS=, INTERP=micropython|cpython)
	$(PY) -m tools.sim --cloud --fresh --settings $(SETTINGS) --interp $(INTERP) --umqtt $(UMQTT) --state build/sim/board --cloud-state build/sim/cloud

test: setup  ## run every test (what CI runs)
	$(PY) -m pytest -q host_tests

soak: setup  ## the runtime soak, 5 minutes per interpreter, both at once (counts in build/robustness/soak-*.json)
	DYNREG_SOAK_S=$(or $(SOAK_S),300) $(PY) -m pytest -q -s host_tests/test_soak.py -k micropython & \
	DYNREG_SOAK_S=$(or $(SOAK_S),300) $(PY) -m pytest -q -s host_tests/test_soak.py -k cpython; b=$$?; wait $$! && exit $$b

cloud: setup  ## run the cloud emulator in the foreground (ARGS="--host 0.0.0.0 --cert-name 192.168.1.10")
	$(PY) -m tools.cloud --state build/cloud $(ARGS)

bench: setup  ## RAM, flash, round trips, boot time vs the official SDK, a fleet of 1,000 (tools/bench/; ARGS=--quick)
	$(PY) -m tools.bench $(ARGS)

mutate: setup  ## mutation score of firmware/lib/dynreg under the fast tests (docs/testing.md; ARGS="--jobs 1 crypto.py ...")
	nice -n 10 $(PY) -m tools.mutate --jobs 2 $(ARGS)

clean:  ## remove build output (keeps the venv and the boards' NVS backups in build/nvs-backup)
	if [ -d build ]; then find build -mindepth 1 -maxdepth 1 ! -name nvs-backup -exec rm -rf {} +; fi

# --------------------------------------------------------------------------- real boards
ESPTOOL  = $(PY) -m esptool
MPREMOTE = $(PY) -m mpremote
BOARDS   = $(patsubst boards/%/board.json,%,$(wildcard boards/*/board.json))
# $(call need,VAR,hint): stop before anything runs when VAR is unset.
need = $(if $($(1)),,$(error $(1)= is required: $(2)))
# $(call fact,FIELD): one fact of BOARD's partition layout (tools/factory/boards.py, stdlib only).
fact = $(or $(shell $(PYTHON) tools/factory/boards.py "$(BOARD)" $(1) --partition "$(PARTITION)" 2>/dev/null),$(error BOARD=$(BOARD) PARTITION=$(PARTITION): no $(1) (boards: $(BOARDS))))
# $(real_board): stop unless BOARD is a real board (the simulated one boots images with python -m tools.sim --nvs).
real_board = $(call need,BOARD,one of $(BOARDS))$(if $(filter sim,$(call fact,chip)),$(error BOARD=$(BOARD) has no serial port: boot an image with python -m tools.sim --nvs IMAGE))
ESPTOOL_AT = $(ESPTOOL) --chip $(call fact,chip) --port $(PORT) --baud $(BAUD)
BACKUP    = build/nvs-backup/$(notdir $(PORT)).bin
# $(call private,FILE): prefix of a command that writes FILE, which holds secrets: 0600 whatever the umask
# (an existing file is chmod-ed first: esptool reopens it and keeps its mode).
private = { [ ! -e $(1) ] || chmod 600 $(1); } && umask 077 &&
# lib/dynreg goes to the board compiled by mpy-cross -O3 (tools/factory/flash.py stage), as `make bench` measures it.
define deploy_cmds
	$(PY) tools/factory/flash.py stage
	$(MPREMOTE) connect $(PORT) cp -r build/deploy/lib : + cp firmware/boot.py firmware/main.py :
endef

flash: setup  ## backup NVS, firmware, NVS (keeps a device secret unless FORCE=1), files: BOARD= PORT= [FIRMWARE=] [NVS=] [PARTITION=ota]
	$(real_board)$(call need,PORT,the serial port e.g. /dev/ttyUSB0)$(if $(FIRMWARE),$(if $(wildcard $(FIRMWARE)),,$(error FIRMWARE=$(FIRMWARE) not found)))$(if $(NVS),$(if $(wildcard $(NVS)),,$(error NVS=$(NVS) not found)))
	$(PY) tools/factory/flash.py flash --board $(BOARD) --partition $(PARTITION) --port $(PORT) --baud $(BAUD) --backup $(BACKUP)$(if $(FIRMWARE), --firmware $(FIRMWARE))$(if $(NVS), --nvs $(NVS))$(if $(FORCE), --force)

deploy: setup  ## copy boot.py, main.py and lib/dynreg to the board with mpremote: PORT=
	$(call need,PORT,the serial port e.g. /dev/ttyUSB0)
	$(deploy_cmds)

nvs-backup: setup  ## save the board's NVS region: BOARD= PORT= [FILE=build/nvs-backup/<port>.bin] [PARTITION=ota]
	$(real_board)$(call need,PORT,the serial port e.g. /dev/ttyUSB0)
	@mkdir -p $(dir $(or $(FILE),$(BACKUP)))
	$(call private,$(or $(FILE),$(BACKUP))) $(ESPTOOL_AT) read-flash $(call fact,nvs_offset) $(call fact,nvs_size) $(or $(FILE),$(BACKUP))
	$(PY) tools/factory/flash.py show $(or $(FILE),$(BACKUP))

nvs-restore: setup  ## write a saved NVS region back: BOARD= PORT= [FILE=build/nvs-backup/<port>.bin] [PARTITION=ota]
	$(real_board)$(call need,PORT,the serial port e.g. /dev/ttyUSB0)
	$(PY) tools/factory/flash.py show --board $(BOARD) --partition $(PARTITION) $(or $(FILE),$(BACKUP))
	$(ESPTOOL_AT) write-flash $(call fact,nvs_offset) $(or $(FILE),$(BACKUP))

# WIFI_SSID and WIFI_PASS reach tools/hil through the environment, never a command line make echoes.
hil: setup  ## a board from blank to logged in against the emulator on this PC: BOARD= PORT= [PLATFORM=] [FIRMWARE=] [FORCE=1] WIFI_SSID= [WIFI_PASS=] (docs/hil.md)
	$(call need,BOARD,one of $(BOARDS))$(if $(filter sim,$(BOARD)),,$(call need,PORT,the serial port e.g. /dev/ttyUSB0))$(if $(FIRMWARE),$(if $(wildcard $(FIRMWARE)),,$(error FIRMWARE=$(FIRMWARE) not found)))
	$(PY) -m tools.hil --board $(BOARD) --partition $(PARTITION) --platform $(PLATFORM)$(if $(PORT), --port $(PORT))$(if $(FIRMWARE), --firmware $(FIRMWARE))$(if $(FORCE), --force)

provision: setup  ## NVS images from a batch file: CSV= BOARD= [PARTITION=ota] [OUT=build/nvs]
	$(call need,CSV,the batch file)$(call need,BOARD,one of $(BOARDS))
	$(PY) tools/factory/provision.py $(CSV) --board $(BOARD) --partition $(PARTITION) --out $(OUT)
