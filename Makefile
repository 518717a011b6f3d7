# frontfilter: `make run` tries it out, `make test` runs the whole suite.
# Both install what they need on a fresh Debian machine: system packages via apt-get (only the
# missing ones, without letting apt start any daemon), then a .venv with the project in it.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-packages

# Debian packages: libmagic for content typing; libarchive for archives (libarchive-c loads it); swaks is the real-world client the tests and
# README use (with its TLS and AUTH helpers); python3-venv for a Debian Python without ensurepip;
# prometheus (and its promtool) checks the metrics, the dashboard and the alert rules for real.
RUN_DEBS  := libmagic1 libarchive13
TEST_DEBS := libmagic1 libarchive13 swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl
TEST_DEBS += prometheus
# clamd for the antivirus tests, and Debian's test files (clean files holding a test signature).
# The tests run their own clamd; apt must not start the system's clamd or freshclam (no
# signature database yet; freshclam would go to the internet): ensure-debs.sh sees to that.
TEST_DEBS += clamav-daemon clamdscan clamav-testfiles
# tests/deploy/: real systemd booted in systemd-nspawn runs the units; the container installs
# from the host's files (an overlay), so python3-venv must be on the host; nft and haproxy
# check the firewall and load-balancer examples of deploy/.
TEST_DEBS += systemd-container python3-venv nftables haproxy
# bench/: Postfix is the reference relay, and its smtp-source / smtp-sink the load and the
# backend; `make test` runs the bench on a tiny load so the harness cannot rot.
TEST_DEBS += postfix

.PHONY: run test fuzz check bench clean system-run system-test

run: system-run $(STAMP)
	@mkdir -p dev/var
	@echo "frontfilter: starting the sink (backend stand-in) on 127.0.0.1:2526 and the relay on 127.0.0.1:2525"
	@echo "frontfilter: mail arriving at the sink is stored in dev/var/maildir/new/ ; Ctrl-C stops both"
	@$(PY) -m frontfilter sink --listen 127.0.0.1:2526 --maildir dev/var/maildir & \
	  SINK=$$!; trap 'kill $$SINK 2>/dev/null; wait $$SINK 2>/dev/null' EXIT INT TERM; \
	  $(PY) -m frontfilter serve --config dev/frontfilter.toml

test: system-test $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest -q

# The differential content fuzz at length (tests/content/test_differential_fuzz.py): a fresh
# seed each run; `make test` runs the same property on a fixed seed and few examples.
FUZZ_EXAMPLES ?= 5000
fuzz: system-test $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 $(PY) -m pytest -q tests/content/test_differential_fuzz.py

# The full benchmark: several minutes, the table to stdout and bench/results.json (bench/README.md).
bench: system-test $(STAMP)
	$(PY) bench/run.py

check: $(STAMP)
	$(PY) -m frontfilter check --config dev/frontfilter.toml
	$(PY) -m frontfilter check --config deploy/frontfilter.example.toml --rules rules   # its rules.dir is the deployed one

system-run:
	@sh tools/ensure-debs.sh $(RUN_DEBS)
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || sh tools/ensure-debs.sh python3-venv

system-test:
	@sh tools/ensure-debs.sh $(TEST_DEBS)
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || sh tools/ensure-debs.sh python3-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) dev/var build *.egg-info
