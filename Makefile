# The team's vocabulary: make demo | test | lint | bench. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-scale clean schema grpc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits/demo.py

# TensorFlow and torch's compiler stack crash when both load into one process (TF first),
# so the TensorFlow tests run in a pytest process of their own.
test: $(STAMP)
	$(PY) -m pytest -m "not tensorflow"
	$(PY) -m pytest -m tensorflow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-scale: $(STAMP)  ## the size benchmark at 0.1, 1 and 4 GiB (about 40 GB of disk, 10 min)
	SCALE_GIB="0.1 1 4" $(PY) benchmarks/run.py scale changes stalls

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/digits/out benchmarks/.work

schema: $(STAMP)  ## regenerate the shipped crate.json JSON Schema after changing manifest.py
	$(PY) -c "import json; from modelcrate.manifest import json_schema; \
	open('src/modelcrate/schemas/crate-v1.schema.json', 'w').write(json.dumps(json_schema(), indent=2, sort_keys=True) + '\n')"

grpc: $(STAMP)  ## regenerate the gRPC modules from src/modelcrate/server/grpc/inference.proto
	cd src && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
		modelcrate/server/grpc/inference.proto
