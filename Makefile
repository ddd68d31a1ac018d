# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mobilekit-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test install browser clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a looser pin from another package would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# requirements.lock holds the versions known to work together (pip freeze of a good install):
	# constraining to it keeps installs reproducible and spares pip's resolver long backtracking.
	$(BIN)/pip install --quiet -c requirements.lock -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium renders the HTML reports in the browser tests.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will skip"; }

demo: $(STAMP)
	$(BIN)/mobilekit demo --out $(DEMO_OUT)

test: $(STAMP) browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .mobilekit-cache
