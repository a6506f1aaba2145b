# The two commands of the README. Each creates .venv on first use and installs what it needs,
# with the exact versions of constraints.txt, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.proad-installed
DEMO   := demo
# NVIDIA's TensorRT 11.4 bindings (real API names, real tensorrt.plugin source) and the 10.13 type
# stubs: test oracles only, installed apart so that `import tensorrt` keeps meaning "the real one".
ORACLE := $(VENV)/trt-oracle

.PHONY: test demo venv clean-demo stress services demo-line

# Real services that tests start themselves: the MQTT broker and the browser for proad-view's page.
# Installed from Debian's packages when missing and we may (root with apt-get); otherwise the tests
# that need them skip and say why.
SYSTEM_PACKAGES := mosquitto chromium chromium-driver
services:
	@missing=""; \
	{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (Debian packages)"; \
			{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } \
				>/dev/null 2>&1 || echo "could not install$$missing: the tests that need them will skip"; \
		else echo "missing$$missing (not root or no apt-get): the tests that need them will skip"; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,onnx,export,dev,bench,bridges,openvino]'
	$(PY) -m pip install -q --no-deps --target $(ORACLE)/trt11 tensorrt-cu13-bindings==11.4.0.106
	$(PY) -m pip install -q --no-deps --target $(ORACLE)/trt10 tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

venv: $(STAMP)

## make test: lint, then the whole test suite (CI runs exactly this through .ci/run)
test: $(STAMP) services
	$(PY) -m ruff check .
	$(PY) -m pytest -q

## make stress: make test on a fresh clone, 5 times as the machine is and 3 times with every core kept busy
stress: $(STAMP)
	$(PY) bench/suite_stress.py

## make demo: the demo model (trained on generated data the first time, ~3 min on 2 cores; the recipe:
## bench/demo_training.py, README "The demo model's recipe") exported to
## ONNX, the daemon on a synthetic camera, and a live subscriber printing OK/NG results, then a summary
demo: $(DEMO)/model.onnx
	$(VENV)/bin/proad-edge demo --workdir $(DEMO) --seconds 20

## make demo-line: the demo with what sits beside the daemon on a line, for 5 minutes: the operator's
## page on http://127.0.0.1:8080/, the OPC UA bridge (opc.tcp://127.0.0.1:4840/proad/, plc/demo) and
## the MQTT bridge into a local mosquitto (port 1883, or a free one when taken)
demo-line: $(DEMO)/model.onnx services
	$(VENV)/bin/proad-edge demo --workdir $(DEMO) --seconds 300 --line

$(DEMO)/eval.json: $(DEMO)/model.pt
	$(VENV)/bin/proad-eval --data $(DEMO)/data --checkpoint $(DEMO)/model.pt --json $(DEMO)/eval.json \
		--table $(DEMO)/eval.md --viz $(DEMO)/viz --quiet

$(DEMO)/model.onnx: $(DEMO)/eval.json
	$(VENV)/bin/proad-export onnx --checkpoint $(DEMO)/model.pt --out $@

$(DEMO)/data/.complete: $(STAMP)
	$(VENV)/bin/proad-synth --out $(DEMO)/data --train 100 --test-good 10 --test-per-defect 5
	touch $@

$(DEMO)/model.pt: $(DEMO)/data/.complete
	$(VENV)/bin/proad-train --data $(DEMO)/data --out $@ --iterations 2000 --batch-size 8 --resume

clean-demo:
	rm -rf $(DEMO)
