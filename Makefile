# Every target installs what it needs on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := openssh-server openssh-client netcat-openbsd iproute2 kmod e2fsprogs \
	libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils \
	libxml2-utils drbd-utils xen-tools debootstrap fdisk lvm2 chromium

.PHONY: deps apt venv lint test e2e conformance lab-up lab-down demo bench clean

deps: apt venv

apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "* apt: installing $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		fi; \
	else echo "* apt: not root or no apt-get; skipping system packages"; fi

venv: $(BIN)/fab

$(BIN)/fab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

E2E_REPORT := tests/lab/.work/e2e-report.txt

# ruff (pyflakes, bugbear, import order) over everything, mypy over tasks/.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy tasks

# The checks, then every test, the real-guest boots included; not the same guests under a real
# Xen (marker realxen: over 45 minutes a guest here; `make e2e` runs them).
test: deps lint
	rm -f $(E2E_REPORT) tests/lab/.work/e2e-downtime.jsonl
	$(BIN)/pytest -q -m "not realxen"
	if [ -f $(E2E_REPORT) ]; then cat $(E2E_REPORT); fi

# The real xen-create-image guests: moved between the lab's Xen and KVM (minutes), then each
# under a real Xen 4.17 in a TCG VM to KVM and back (about 50 minutes a guest); one line per run.
e2e: deps
	rm -f $(E2E_REPORT) tests/lab/.work/e2e-downtime.jsonl
	$(BIN)/pytest -q -m e2e tests/e2e; status=$$?; cat $(E2E_REPORT); exit $$status

# The lab's simulators against transcripts of the real commands (one line per simulator).
conformance: venv
	$(BIN)/python -m tests.lab.conformance check

lab-up: deps
	$(BIN)/python -m tests.lab up

lab-down: venv
	$(BIN)/python -m tests.lab down

LAB_FAB := FABRIC_INVENTORY=tests/lab/hosts.yml FABRIC_STATE_DIR=tests/lab/.work/tool-state $(BIN)/fab

demo: deps
	$(BIN)/python -m tests.lab up
	$(BIN)/python -m tests.lab reset
	$(LAB_FAB) migrate --vm logger
	$(LAB_FAB) status
	$(LAB_FAB) migrate --vm logger
	$(LAB_FAB) status
	$(BIN)/python -m tests.lab down

# REAL_GUESTS=1 first moves the e2e's real guests (minutes), whose downtimes give switch-share.
bench: deps
	if [ "$(REAL_GUESTS)" = 1 ]; then rm -f tests/lab/.work/e2e-downtime.jsonl && \
		$(BIN)/pytest -q -m "e2e and not realxen" tests/e2e; fi
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
