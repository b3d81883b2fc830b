# sdn: build, test and demo entry points.  Everything runs as root on Debian 12.
#
#   make setup   Debian packages + .venv + userspace Open vSwitch (idempotent, fast when done)
#   make test    unit + integration tests (integration needs root and OVS; setup provides both; the
#                database tests start a PostgreSQL cluster of their own, tests/pg.py)
#   make demo    Mininet demo: two hypervisors, two projects, DHCP + isolation checks
#   make demo-linux  the demo story on the Linux backend (bridge, dnsmasq, iptables; no OVS)
#   make fuzz    1M mutated DHCP frames through every DHCP path (not part of test)
#   make bench   benchmarks side by side with Kea/dnsmasq/ovs-ofctl (not part of test; results in var/bench/)
#   make clean   remove runtime state (var/)
#   make sample-config  regenerate etc/sdn/sdn.conf.sample (oslo-config-generator; check it in)

SHELL := /bin/bash
PYTHON_SYS := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
export DEBIAN_FRONTEND := noninteractive

APT_PACKAGES := openvswitch-switch openvswitch-common mininet isc-dhcp-client ethtool tcpdump \
	iproute2 iputils-ping python3-venv python3-pip iperf3 dnsmasq-base iptables ebtables arptables conntrack ipset \
	ndisc6 postgresql

# Stamp: pip install is redone only when pyproject.toml changes (or the venv is new).
PIP_STAMP := $(VENV)/.sdn-pip-stamp

.PHONY: setup apt venv ovs test demo demo-linux clean bench bench-deps fuzz sample-config

setup: apt $(PIP_STAMP) ovs

# $(call apt_ensure,PACKAGES): apt-get update/install only when one is missing (dpkg -s is fast).
define apt_ensure
	@missing=""; \
	for p in $(1); do \
	  dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update && apt-get install -y --no-install-recommends $$missing; \
	fi
endef

apt:
	$(call apt_ensure,$(APT_PACKAGES))

$(VENV)/bin/python:
	$(PYTHON_SYS) -m venv --system-site-packages $(VENV)

$(PIP_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test,postgresql]'
	touch $@

venv: $(PIP_STAMP)

# Userspace OVS (no kernel module here): start ovsdb-server + ovs-vswitchd if not answering.
# ovs-ctl prints a harmless ulimit error without systemd; the re-check decides success.
ovs:
	@if ! ovs-vsctl --timeout=5 show >/dev/null 2>&1; then \
	  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random || true; \
	  ovs-vsctl --timeout=10 show >/dev/null || { echo "Open vSwitch did not start" >&2; exit 1; }; \
	fi

test: setup
	$(PY) -m pytest -q --durations=15 -m 'not scale' tests

demo: setup
	$(PY) mininet/run_demo.py topology/demo.toml

# The same story on the Linux backend (network_driver = linux, FlatDHCP): Linux bridge, dnsmasq,
# iptables, ebtables in a hypervisor namespace run by `sdn agent`; no Open vSwitch involved.
demo-linux: setup
	$(PY) demo/linux_demo.py

# Benchmark-only packages (perfdhcp is in kea-admin; OVN 23.03, the same-run peer, in
# ovn-central + ovn-host: benchmarks/ovn.py runs it in a lab of its own); installed only when missing.
BENCH_PACKAGES := kea-admin kea-dhcp4-server iperf3 dnsmasq-base python3-matplotlib ovn-central ovn-host
# gcc builds the DHCP load generator (benchmarks/dhcpgen/dhcpgen.c) into the bench's work dir
BENCH_PACKAGES += gcc

bench-deps:
	$(call apt_ensure,$(BENCH_PACKAGES))

bench: setup bench-deps
	$(PY) benchmarks/run.py --out var/bench
	$(PY) -m pytest -q -m scale tests    # correctness at scale (5,000 VIFs in one flood)

# 1,000,000 mutated DHCP frames through the controller path, the responder and the raw-socket
# batch handler (fixed seed, 2 processes); exits non-zero on any escape, hang, oversize reply
# or corrupted lease. Not part of `make test`.
fuzz: setup
	$(PY) benchmarks/fuzz_dhcp.py

# The checked-in sample config, from every option group sdn registers (sdn.config.list_opts)
# and oslo.log's; tests/unit/test_packaging.py fails when it is out of date.
sample-config: $(PIP_STAMP)
	$(VENV)/bin/oslo-config-generator --config-file etc/oslo-config-generator/sdn.conf \
	  --output-file etc/sdn/sdn.conf.sample

clean:
	rm -rf var/
