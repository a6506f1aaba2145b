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

.PHONY: test demo venv clean-demo stress

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,onnx,export,dev,bench]'
	$(PY) -m pip install -q --no-deps --target $(ORACLE)/trt11 tensorrt-cu13-bindings==11.4.0.106
	$(PY) -m pip install -q --no-deps --target $(ORACLE)/trt10 tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

venv: $(STAMP)

## make test: lint, then the whole test suite (CI runs exactly this through .ci/run)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

## make stress: make test on a fresh clone, 5 times as the machine is and 3 times with every core kept busy
stress: $(STAMP)
	$(PY) bench/suite_stress.py

## make demo: the demo model (trained on generated data the first time, ~3 min on 2 cores) exported to
## ONNX, the daemon on a synthetic camera, and a live subscriber printing OK/NG results, then a summary
demo: $(DEMO)/model.onnx
	$(VENV)/bin/proad-edge demo --workdir $(DEMO) --seconds 20

$(DEMO)/eval.json: $(DEMO)/model.pt
	$(VENV)/bin/proad-eval --data $(DEMO)/data --checkpoint $(DEMO)/model.pt --json $(DEMO)/eval.json \
		--table $(DEMO)/eval.md --viz $(DEMO)/viz --quiet

$(DEMO)/model.onnx: $(DEMO)/eval.json
	$(VENV)/bin/proad-export onnx --checkpoint $(DEMO)/model.pt --out $@

$(DEMO)/data/.complete: $(STAMP)
	$(VENV)/bin/proad-synth --out $(DEMO)/data --train 60 --test-good 10 --test-per-defect 5
	touch $@

$(DEMO)/model.pt: $(DEMO)/data/.complete
	$(VENV)/bin/proad-train --data $(DEMO)/data --out $@ --iterations 400 --resume

clean-demo:
	rm -rf $(DEMO)
