# One entry point for people and CI: `make test` installs what it needs and runs every check.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests run for real: HAProxy 2.6, curl (the preStop's client),
# iproute2 (network namespaces for the hc source check), openssl (a test certificate);
# buildah, containerd and mmdebstrap: the images built and loaded for real (molecule images).
# chromium: the comparison page as a person sees it (a screenshot, headless).
# wrk: the benchmarks' reference load beside the driver and vegeta (benchmarks/).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup apt venv gotools lint pytest molecule test experiment onebox onebox-down onebox-apt clean

help:
	@echo "make test        install (apt, .venv) then lint and pytest"
	@echo "make setup       install only (apt, .venv, the Go tools the runs drive)"
	@echo "make lint        ruff, shellcheck, yamllint, ansible-lint, import-linter (layers)"
	@echo "make pytest      the test suite (PYTEST_ARGS='-m \"not e2e\"' for the fast loop)"
	@echo "make molecule    the molecule scenarios (roles converged on this machine)"
	@echo "make experiment  every termination mode in every scenario on the local lab, side by side,"
	@echo "                 and a comparison (MODES=current,ordered SCENARIOS=steady REPEATS=3 to choose);"
	@echo "                 TARGET=onebox: the same on onebox, then both labs' verdicts side by side;"
	@echo "                 RETRY=once: the client retries a failed request once, as many do;"
	@echo "                 EVENTS=drain,scale-down,rollout (TARGET=onebox): what terminates the pod"
	@echo "make onebox      the homelab's three-node kubeadm cluster on this machine, built from the pinned"
	@echo "                 Go modules (docs/onebox.md); a second run changes nothing"
	@echo "make onebox-down remove it, leaving nothing behind but the build cache"

setup: apt venv gotools

# $(call apt_ensure,COMMAND:PACKAGE ...): install the packages whose command is missing.
define apt_ensure
	@missing=""; \
	for cmd in $(1); do \
	  command -v "$${cmd%%:*}" >/dev/null 2>&1 || missing="$$missing $${cmd##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

apt:
	$(call apt_ensure,haproxy:haproxy curl:curl ip:iproute2 openssl:openssl \
	    buildah:buildah containerd:containerd ctr:containerd mmdebstrap:mmdebstrap chromium:chromium \
	    wrk:wrk)

venv: $(STAMP)

# Two distributions, both editable: the apps (apps/, what the images carry) and the lab.
$(STAMP): pyproject.toml apps/pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ./apps -e '.[dev]'
	touch $(STAMP)

# The Go tools the runs drive (vegeta: the busy scenario's pooled class), each pinned in
# its own module under tools/go/ and built into a cache outside the checkout
# (runbook.runners.gotools); a second run finds them built.
gotools: venv
	$(BIN)/python -m runbook.runners.gotools

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	git ls-files -co --exclude-standard '*.sh' .ci/run | xargs $(BIN)/shellcheck
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint
	$(BIN)/lint-imports

pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

# molecule calls ansible-playbook and friends by name: the venv's bin goes first on PATH.
MOLECULE_SCENARIOS := haproxy manifests cluster_roles lab images
molecule: venv
	for s in $(MOLECULE_SCENARIOS); do PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/molecule test -s $$s || exit 1; done

test: setup lint pytest molecule

# MODES, SCENARIOS, REPEATS (or modes=, scenarios=, repeats=) run less; EVENTS= (events=)
# names what terminates the pod, each under every scenario (default delete; drain and
# scale-down on a cluster: registry.EVENTS says which the local lab refuses); ARTIFACTS= puts
# the runs elsewhere than artifacts/, FIRST_LAB= moves the labs (1..200) off another's,
# LABS_AT_ONCE= sets how many share the machine (default: 2 per usable CPU). TARGET=
# names an inventory: local (the default), onebox or homelab (a cluster: its modes run
# one after the other; onebox's lock is held, so make onebox-down waits its turn).
# RETRY=once: the client sends a failed request once more (registry.CLIENT_RETRIES).
# A value reaches the runner through the environment, as typed (never expanded by make
# nor pasted into the shell's command line), and only when it was given: one given
# empty is refused there like any other bad value. The lower-case spellings are the same.
given = $(filter command line environment override,$(origin $(1)) $(if $(2),$(origin $(2))))
typed = $(if $(filter command line environment override,$(origin $(1))),$(value $(1)),$(if $(2),$(value $(2))))
export IGW_MODES = $(call typed,MODES,modes)
export IGW_SCENARIOS = $(call typed,SCENARIOS,scenarios)
export IGW_EVENTS = $(call typed,EVENTS,events)
export IGW_REPEATS = $(call typed,REPEATS,repeats)
export IGW_ARTIFACTS = $(call typed,ARTIFACTS)
export IGW_FIRST_LAB = $(call typed,FIRST_LAB)
export IGW_LABS_AT_ONCE = $(call typed,LABS_AT_ONCE)
export IGW_TARGET = $(call typed,TARGET)
export IGW_CLIENT_RETRY = $(call typed,RETRY,retry)
# make would export the variables themselves to every recipe, expanded
unexport MODES modes SCENARIOS scenarios EVENTS events REPEATS repeats ARTIFACTS FIRST_LAB \
	LABS_AT_ONCE TARGET RETRY retry
experiment: setup
	$(BIN)/python -m runbook.runners.all \
	  $(if $(call given,TARGET),--target="$$IGW_TARGET") \
	  $(if $(filter onebox,$(call typed,TARGET)),--cluster-lock=$(ONEBOX_LOCK)) \
	  $(if $(call given,MODES,modes),--modes="$$IGW_MODES") \
	  $(if $(call given,SCENARIOS,scenarios),--scenarios="$$IGW_SCENARIOS") \
	  $(if $(call given,EVENTS,events),--events="$$IGW_EVENTS") \
	  $(if $(call given,REPEATS,repeats),--repeats="$$IGW_REPEATS") \
	  $(if $(call given,ARTIFACTS),--artifacts="$$IGW_ARTIFACTS") \
	  $(if $(call given,FIRST_LAB),--first-lab-index="$$IGW_FIRST_LAB") \
	  $(if $(call given,LABS_AT_ONCE),--labs-at-once="$$IGW_LABS_AT_ONCE") \
	  $(if $(call given,RETRY,retry),--client-retry="$$IGW_CLIENT_RETRY")

# onebox: nodes under systemd-nspawn, root filesystems by mmdebstrap, images by buildah,
# nsenter (util-linux), ssh to the nodes, cc for Kubernetes' pause.c. Go comes with the
# machine (runbook.onebox.preflight names anything missing).
onebox-apt:
	$(call apt_ensure,systemd-nspawn:systemd-container mmdebstrap:mmdebstrap buildah:buildah \
	    nsenter:util-linux ssh:openssh-client cc:gcc ip:iproute2 busybox:busybox-static)

# One onebox per machine (its addresses and folders are the machine's): a second
# command while one runs is refused at once, with exit code 75.
ONEBOX_LOCK := /run/lock/igw-onebox.lock
ONEBOX_PLAY = flock --nonblock --conflict-exit-code 75 $(ONEBOX_LOCK) \
	env PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-playbook -i inventory/onebox
onebox: setup onebox-apt
	@$(ONEBOX_PLAY) playbooks/onebox.yml || { rc=$$?; \
	  [ $$rc = 75 ] && echo "make onebox: another onebox command holds $(ONEBOX_LOCK)" >&2; exit $$rc; }

onebox-down: setup
	@$(ONEBOX_PLAY) playbooks/onebox-down.yml || { rc=$$?; \
	  [ $$rc = 75 ] && echo "make onebox-down: another onebox command holds $(ONEBOX_LOCK)" >&2; exit $$rc; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
