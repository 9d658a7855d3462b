# The few targets people reach for.  Each installs what it needs by itself:
# Debian packages through deploy/install-deps.sh, Python packages into .venv here.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test unit lint bench deps clean

demo: $(STAMP)
	$(PY) deploy/demo.py $(if $(KEEP),--keep)

# The whole suite, integration layer included: where the netns/system/fault tests cannot
# run the run fails (tests/conftest.py); any non-zero pytest status, 5 "no tests
# collected" too, fails the target.
test: $(STAMP)
	@start=$$(date +%s); \
	env -u PORTIER_UNIT_ONLY $(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	echo "make test: total $$(( $$(date +%s) - start )) s (pytest exit $$rc)"; \
	[ $$rc -eq 0 ] || exit $$(( rc == 0 ? 1 : rc ))

unit: $(STAMP)
	PORTIER_UNIT_ONLY=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy portier workers supervisor

bench: $(STAMP)
	$(PY) bench/engine_bench.py
	$(PY) bench/appliance_bench.py
	$(PY) bench/control_bench.py
	$(PY) bench/compare_bench.py

deps:
	bash deploy/install-deps.sh

$(STAMP): pyproject.toml deploy/install-deps.sh supervisor/bpf/portier_tc.c
	bash deploy/install-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip setuptools
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,dev]'
	$(PY) -c 'from portier.supervisor.bpfpath import build; print("built", build())'
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
