# cc-imds developer commands. `make demo` and `make test` are the two the README starts with.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Interpreters: AL2023's Python 3.9 and the newest here. pyenv's installed versions are used
# directly (its shims need an activated shell); otherwise whatever is on PATH.
PYENV_ROOT ?= $(HOME)/.pyenv
PY39  ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.9*/bin/python3.9) $(shell command -v python3.9))
PY313 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.13*/bin/python3.13) $(shell command -v python3.13))
PYTHON ?= python3
VENV := .venv
# The RPM built from the tree as it is (see the RPM section).
RPM_BUILT := rpm/build/.built
PIP_FLAGS := --quiet --disable-pip-version-check
# Runtime libraries, test tools, what real cloud-init needs to run in the end-to-end tests,
# the real AWS clients that read credential outputs (botocore, the AWS CLI v1), and the
# Prometheus text parser that reads the watcher's metrics file.
TEST_DEPS := PyYAML jsonschema Jinja2 pytest hypothesis prometheus_client requests configobj jsonpatch botocore awscli
# The end-to-end tests must run, not skip, when `make test` runs them.
export CC_IMDS_REQUIRE_E2E := 1

help:
	@echo "make demo    set up a virtualenv and run 'cc-imds demo' against the bundled emulator"
	@echo "make test    everything CI runs: lint, then all tests on Python 3.9 (AL2023 pins) and 3.13,"
	@echo "             including real cloud-init 22.2.2 (vendored), 22.4.2 and 25.1.4 (from Debian), never installed,"
	@echo "             the RPM (built, linted, installed into a scratch root), a fresh clone of the"
	@echo "             repository in an empty folder (built, fast suite) and the box (test-box), the"
	@echo "             suites at the same time after setup and lint, with the time each part took"
	@echo "make test-box  boot Debian 11, 12 and 13 VMs (systemd, cloud-init's Ec2 datasource) against the"
	@echo "             emulator inside them, with cc-imds installed from the checkout's wheel; Debian 11"
	@echo "             has AL2023's stack: upstream cloud-init 22.2.2, Python 3.9, jsonschema 3.2.0, Jinja2 2.11.3"
	@echo "make rpm     build the source and binary RPMs under rpm/build/"
	@echo "make lint    ruff and mypy"
	@echo "make reliability-doc   rewrite docs/RELIABILITY.md from a fresh run of the reliability suite"
	@echo "make explore  the property tests with fresh random draws and 20 times the examples (CI's are fixed)"

$(VENV)/demo/.ready: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)/demo
	$(VENV)/demo/bin/pip install $(PIP_FLAGS) .
	touch $@

demo: $(VENV)/demo/.ready
	$(VENV)/demo/bin/cc-imds demo

$(VENV)/py39/.ready: constraints/al2023.txt
	$(PY39) -m venv $(VENV)/py39
	$(VENV)/py39/bin/pip install $(PIP_FLAGS) -c constraints/al2023.txt $(TEST_DEPS) MarkupSafe
	touch $@

$(VENV)/py313/.ready: constraints/current.txt
	$(PY313) -m venv $(VENV)/py313
	$(VENV)/py313/bin/pip install $(PIP_FLAGS) -c constraints/current.txt $(TEST_DEPS) ruff mypy types-PyYAML
	touch $@

lint: $(VENV)/py313/.ready
	$(VENV)/py313/bin/ruff check cc_imds tests bench rpm/ci
	$(VENV)/py313/bin/mypy

system-deps:
	tests/install-system-deps

cloud-init: system-deps
	tests/e2e/fetch-cloud-init

# Debian's SELinux userland, unpacked (never installed) with the reference policy built from it,
# for the SELinux tests (tests/test_labels.py).
selinux:
	tests/selinux/fetch-selinux

# Every test run records what the reliability scenarios did (tests/reliability/report.py),
# then checks that docs/RELIABILITY.md lists exactly those scenarios with those results.
RELIABILITY_RUNS := .cache/reliability

# $(1): the virtualenv; $(2): what to run. Records the run in $(RELIABILITY_RUNS)/$(1).jsonl.
define recorded-pytest
	@mkdir -p $(RELIABILITY_RUNS) && rm -f $(RELIABILITY_RUNS)/$(1).jsonl
	CC_IMDS_RELIABILITY_REPORT=$(CURDIR)/$(RELIABILITY_RUNS)/$(1).jsonl $(VENV)/$(1)/bin/python -m pytest -q -p no:cacheprovider --durations=20 $(2)
endef

test-py39: $(VENV)/py39/.ready cloud-init selinux $(RPM_BUILT)
	$(call recorded-pytest,py39,-m "not clone")
	$(VENV)/py39/bin/python -m tests.reliability.report check $(RELIABILITY_RUNS)/py39.jsonl docs/RELIABILITY.md

# The RPM tests run once, in the 3.9 run: they build and install with AL2023's Python 3.9
# whichever Python runs pytest. So do the SELinux tests that load libselinux's binding: the one
# this host can load is Debian's for Python 3.9 (Debian 13's, for 3.13, needs a newer glibc).
test-py313: $(VENV)/py313/.ready cloud-init $(RPM_BUILT)
	$(call recorded-pytest,py313,-m "not clone and not rpm and not selinux")
	$(VENV)/py313/bin/python -m tests.reliability.report check $(RELIABILITY_RUNS)/py313.jsonl docs/RELIABILITY.md

# Once, not per Python: a fresh clone in an empty folder builds and passes the fast suite.
test-clone: $(VENV)/py39/.ready $(RPM_BUILT)
	$(VENV)/py39/bin/python -m pytest -q -p no:cacheprovider -m clone

# Rewrite docs/RELIABILITY.md from a fresh run of the reliability suite (as root, like make test);
# leaving out the one test that checks the document being rewritten.
reliability-doc: $(VENV)/py313/.ready system-deps
	$(call recorded-pytest,py313,tests/reliability --deselect tests/reliability/test_report.py::test_every_scenario_has_a_row_with_a_result)
	$(VENV)/py313/bin/python -m tests.reliability.report render $(RELIABILITY_RUNS)/py313.jsonl > $(RELIABILITY_RUNS)/RELIABILITY.md
	mv $(RELIABILITY_RUNS)/RELIABILITY.md docs/RELIABILITY.md

# Everything the later parts need, built first so that each part's time is its own.
test-setup: system-deps cloud-init selinux $(RPM_BUILT) $(VENV)/py39/.ready $(VENV)/py313/.ready $(VENV)/al2023-build/.ready

# After setup and lint, the suites run at the same time: each mostly waits on the processes,
# servers and VMs it starts, so two cores finish them all well before one after another.
# Each part's time is printed, and a failure fails the whole.
test:
	tests/run-parts test-setup lint test-py39+test-py313+test-clone+test-box

# CI's property tests draw the same examples every run (tests/conftest.py's "ci" profile), so a
# red run is about the change; exploring draws afresh, many more. Pin what it finds as an @example.
# The reliability suite's property tests run a process per example: EXPLORE_MARKS="" takes them too.
PROPERTY_TESTS = $(shell grep -l "^from hypothesis import" tests/*.py tests/*/*.py)
EXPLORE_MARKS ?= not slow
explore: $(VENV)/py39/.ready $(VENV)/py313/.ready
	HYPOTHESIS_PROFILE=explore $(VENV)/py39/bin/python -m pytest -q -p no:cacheprovider -m "$(EXPLORE_MARKS)" $(PROPERTY_TESTS)
	HYPOTHESIS_PROFILE=explore $(VENV)/py313/bin/python -m pytest -q -p no:cacheprovider -m "$(EXPLORE_MARKS)" $(PROPERTY_TESTS)

.PHONY: help demo lint system-deps cloud-init selinux test test-setup test-py39 test-py313 test-clone reliability-doc explore

# -- the box: real boots under qemu (tests/box) ------------------------------------------
# Images are built from Debian's packages and cached under .cache/box/; the wheel is built
# with AL2023's toolchain, as the RPM's is; `cloud-init analyze` runs on the host from the
# unpacked cloud-init (22.2.2 on the py39 environment, as AL2023 runs it).
test-box: $(VENV)/py39/.ready $(VENV)/py313/.ready $(VENV)/al2023-build/.ready cloud-init
	CC_IMDS_BOX=1 $(VENV)/py313/bin/python -m pytest -q -p no:cacheprovider tests/box

.PHONY: test-box

# -- RPM --------------------------------------------------------------------------------
# Python 3.9 with Amazon Linux 2023's build toolchain: its setuptools 59.6 ignores a PEP 621
# [project] table, which is why the metadata lives in setup.cfg. al2023-build-notests holds
# exactly what the spec BuildRequires without tests, as a clean build root would; al2023-build
# adds pytest, for the default build.
AL2023_BUILD_DEPS := setuptools wheel PyYAML jsonschema Jinja2 MarkupSafe
$(VENV)/al2023-build/.ready: constraints/al2023.txt constraints/al2023-build.txt
	$(PY39) -m venv $(VENV)/al2023-build
	$(VENV)/al2023-build/bin/pip install $(PIP_FLAGS) -c constraints/al2023-build.txt pip
	$(VENV)/al2023-build/bin/pip install $(PIP_FLAGS) -c constraints/al2023-build.txt -c constraints/al2023.txt \
	    $(AL2023_BUILD_DEPS) pytest
	touch $@

$(VENV)/al2023-build-notests/.ready: constraints/al2023.txt constraints/al2023-build.txt
	$(PY39) -m venv $(VENV)/al2023-build-notests
	$(VENV)/al2023-build-notests/bin/pip install $(PIP_FLAGS) -c constraints/al2023-build.txt pip
	$(VENV)/al2023-build-notests/bin/pip install $(PIP_FLAGS) -c constraints/al2023-build.txt \
	    -c constraints/al2023.txt $(AL2023_BUILD_DEPS)
	touch $@

rpm: $(VENV)/al2023-build/.ready $(VENV)/al2023-build-notests/.ready system-deps
	AL2023_PYTHON=$(CURDIR)/$(VENV)/al2023-build/bin/python rpm/build-rpm --ci
	touch $(RPM_BUILT)

# The test parts need the RPM built once from the tree as it is, not once each: they run at
# the same time, and a build starts by emptying rpm/build/.
$(RPM_BUILT): $(VENV)/al2023-build/.ready $(VENV)/al2023-build-notests/.ready $(shell git ls-files 2>/dev/null) \
              | system-deps
	AL2023_PYTHON=$(CURDIR)/$(VENV)/al2023-build/bin/python rpm/build-rpm --ci
	touch $@

.PHONY: rpm

# -- benchmark ----------------------------------------------------------------------------
# Contenders run on both targets: Python 3.13 with current releases (plus the peers: ec2-metadata
# needs 3.10+), and Python 3.9 with AL2023's pins. botocore's IMDSFetcher is the peer on both.
$(VENV)/bench/.ready: constraints/current.txt constraints/bench.txt
	$(PY313) -m venv $(VENV)/bench
	$(VENV)/bench/bin/pip install $(PIP_FLAGS) -c constraints/current.txt -c constraints/bench.txt PyYAML jsonschema \
	    Jinja2 ec2-metadata botocore matplotlib
	touch $@

$(VENV)/bench39/.ready: constraints/al2023.txt constraints/bench.txt
	$(PY39) -m venv $(VENV)/bench39
	$(VENV)/bench39/bin/pip install $(PIP_FLAGS) -c constraints/al2023.txt -c constraints/bench.txt PyYAML jsonschema \
	    Jinja2 MarkupSafe botocore
	touch $@

bench: $(VENV)/bench/.ready $(VENV)/bench39/.ready $(VENV)/py39/.ready cloud-init
	$(VENV)/bench/bin/python bench/run.py
	$(VENV)/bench/bin/python bench/watch.py

.PHONY: bench
