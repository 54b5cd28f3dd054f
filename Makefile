# berth: the two commands are `make run` (start berth: berthd, the Docker Engine API daemon,
# with a busybox image, and a `docker run` through the Docker CLI) and `make test` (every
# test). `make build` builds without testing; `make bench-*` run the benchmarks. Each target
# installs what it is missing; nothing is assumed installed beyond the Rust toolchain, gcc
# and apt.

SHELL := /bin/bash
CARGO ?= cargo
RELEASE := target/release
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(AGENT_TARGET)/release/berth-agent
GUEST := target/guest
VMHOST := tests/vmhost/run
# Docker commands for `make run` to run against berthd (a shell command line):
# `make run CMD='docker run --rm busybox ls /'`.
CMD ?=
export CMD
# What `make run-vm` runs in a bare microVM (no image, the agent's initramfs).
VM_CMD ?= echo "hello from a berth microVM: $$(uname -sr), $$(nproc) vCPUs"; grep MemTotal /proc/meminfo
export VM_CMD
VM_CPUS ?= 2
VM_MEM ?= 256

.PHONY: all build host agent guest run run-vm test test-unit test-kvm test-microvm test-fuzz fuzz lint bench-boot bench-clone bench-net bench-fs bench-image clean

# Each stage says when it ended, in seconds since make started: CI's wall time split.
T0 := $(shell date +%s)
DONE = @echo "make: $@ done at $$(( $$(date +%s) - $(T0) )) s"

all: build

build: host agent guest

# The host binaries (berth-vmm, test guests).
host:
	$(CARGO) build --release --workspace --exclude berth-agent
	$(DONE)

# The agent is PID 1 in the guest: a static binary. Passing --target keeps the static flag
# off build scripts and proc macros.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release \
		--target $(AGENT_TARGET) -p berth-agent
	$(DONE)

# The guest kernel (built once, cached by a hash of its inputs) and the initramfs.
guest: agent
	guest-kernel/build --agent $(AGENT) --out $(GUEST)
	$(DONE)

# Starts berthd with a busybox image and shows a `docker run` (api/dockerd/session), then
# runs $(CMD) against it or, with none, keeps it running for other terminals: directly where
# this host's KVM runs Linux guests, inside the emulated virtualization host otherwise (there
# the session ends after $(CMD): nothing outside reaches its socket).
run: build
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		echo "make run: this host's KVM runs Linux guests: berthd runs here"; \
		api/dockerd/session "$$CMD"; \
	else \
		echo "make run: $$($(RELEASE)/berth-vmm check)"; \
		echo "make run: running berthd inside the emulated virtualization host ($(VMHOST))"; \
		$(VMHOST) -- env BERTH_DATA_ROOT=/run/berth/data api/dockerd/session "$$CMD"; \
	fi

# Boots one bare microVM and runs $(VM_CMD) in it through berth-vmm (no berthd, no image).
run-vm: build
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		echo "make run-vm: this host's KVM runs Linux guests: booting the microVM directly"; \
		$(RELEASE)/berth-vmm run --cpus $(VM_CPUS) --mem $(VM_MEM) -- sh -c "$$VM_CMD"; \
	else \
		echo "make run-vm: $$($(RELEASE)/berth-vmm check)"; \
		echo "make run-vm: booting the microVM inside the emulated virtualization host ($(VMHOST))"; \
		$(VMHOST) -- $(RELEASE)/berth-vmm run --cpus $(VM_CPUS) --mem $(VM_MEM) -- sh -c "$$VM_CMD"; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(DONE)

# Every retry a harness allowed (tests/vmhost/run's fresh emulated host after a crash or hang,
# a boot the emulation lost) is appended here and tallied at the end: none may hide a failure.
export BERTH_RETRY_LOG := $(CURDIR)/target/test-retries.log

test: test-deps build test-retries-reset test-unit test-kvm test-microvm test-images test-fuzz
	@n=$$(cat $(BERTH_RETRY_LOG) 2>/dev/null | wc -l); \
	echo "make test: passed, with $$n retries allowed by the harness$$([ $$n -gt 0 ] && echo :)"; \
	cat $(BERTH_RETRY_LOG) 2>/dev/null | sed 's/^/  /' || true

.PHONY: test-retries-reset
test-retries-reset:
	@mkdir -p target && rm -f $(BERTH_RETRY_LOG)

# What the tests drive besides berth (Debian's docker.io as the anchor, umoci, skopeo,
# busybox-static, kmod, ...): tests/deps/ensure lists every command berth's files call, installs
# the packages missing and fails naming any command still missing. On a host with systemd,
# installing docker.io also starts a system dockerd; the tests never use it (each starts its
# own on a private socket).
.PHONY: test-deps test-images
test-deps:
	tests/deps/ensure test
	$(DONE)

# The image store and the image API through the Docker CLI, with dockerd as the anchor, and
# berthd under hostile clients (no VM needed: runs on this host directly).
test-images: build test-deps
	$(CARGO) test --release -p berth-tests --test images --test hostile
	$(DONE)

# Every parser of untrusted input under libFuzzer with AddressSanitizer (fuzz/README.md): in
# `make test`, FUZZ_CI_SECONDS per target on its corpus; `make fuzz` runs FUZZ_SECONDS each.
FUZZ_CI_SECONDS ?= 15
FUZZ_SECONDS ?= 600
test-fuzz:
	fuzz/run $(FUZZ_CI_SECONDS)
	$(DONE)

fuzz:
	fuzz/run $(FUZZ_SECONDS)
	$(DONE)

# Unit tests beside the code (no VM needed).
test-unit:
	$(CARGO) test --release --workspace --exclude berth-tests
	$(DONE)

# The VMM on this host's own KVM with berth's test guests.
test-kvm:
	$(CARGO) test --release -p berth-tests --test kvm_direct
	$(DONE)

# Real Linux microVMs (tests/tests/microvm.rs, virtiofs.rs, container.rs, network.rs,
# docker.rs), built here and run by tests/run-microvm: directly where `berth-vmm check`
# passes, else inside two emulated virtualization hosts side by side (one vCPU each: with
# two, concurrent microVMs crash it; tests/vmhost/README.md), MICROVM_THREADS tests at a
# time in each. The network tests run first in the Docker CLI tests' host.
MICROVM_TESTS := microvm virtiofs container network docker
MICROVM_THREADS ?= 4
test-microvm:
	@bins=$$($(CARGO) test --release -p berth-tests $(addprefix --test ,$(MICROVM_TESTS)) --no-run --message-format=json \
		| python3 -c 'import json,sys; names=sys.argv[1:]; found={m["target"]["name"]: m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"] in names}; print(" ".join(found[n] for n in names if n in found))' $(MICROVM_TESTS)); \
	set -- $$bins; \
	test $$# -eq $(words $(MICROVM_TESTS)) || { echo "test-microvm: missing test binaries ($$bins)" >&2; exit 1; }; \
	$(RELEASE)/berth-test-images || exit 1; \
	tests/run-microvm --threads $(MICROVM_THREADS) vms=$$1,$$2,$$3 docker=$$4,$$5
	$(DONE)

# (a) the VMM on this host's KVM with the test guest; (b) berth-vmm vs QEMU microvm booting
# berth's kernel: directly where Linux guests run, else inside the emulated host.
BENCH_RUNS ?= 20
bench-boot: build
	$(RELEASE)/bench-boot direct --runs $(BENCH_RUNS)
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-boot emulated --runs $(BENCH_RUNS); \
	else \
		echo "bench-boot: (b) runs inside the emulated virtualization host"; \
		$(VMHOST) -- $(RELEASE)/bench-boot emulated --runs $(BENCH_RUNS); \
	fi

# docker run on berth beside Docker + runc (Debian's docker.io on a private socket), through
# the Docker CLI, and an untar of ~50 MB inside a container: directly where Linux guests
# run, else both daemons inside one emulated host.
BENCH_RUN_RUNS ?= 20
BENCH_UNTAR_RUNS ?= 5
.PHONY: bench-run
bench-run: build test-deps
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-run --runs $(BENCH_RUN_RUNS) --untar-runs $(BENCH_UNTAR_RUNS); \
	else \
		echo "bench-run: berthd and dockerd run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-run \
			--runs $(BENCH_RUN_RUNS) --untar-runs $(BENCH_UNTAR_RUNS); \
	fi

# docker exec and docker stats on berth beside Docker + runc (Debian's docker.io on a private
# socket), through the Docker CLI, one running busybox container each, interleaved: directly
# where Linux guests run, else both daemons inside one emulated host. Every retry the harness
# allowed (a fresh emulated host, a boot berthd retried) is counted and listed at the end.
BENCH_EXEC_RETRY_LOG := $(CURDIR)/target/bench-exec-retries.log
.PHONY: bench-exec
bench-exec: build test-deps
	@rm -f $(BENCH_EXEC_RETRY_LOG); export BERTH_RETRY_LOG=$(BENCH_EXEC_RETRY_LOG); \
	if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-exec --runs $(BENCH_RUNS); \
	else \
		echo "bench-exec: berthd and dockerd run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-exec \
			--runs $(BENCH_RUNS); \
	fi; rc=$$?; \
	n=$$(cat $(BENCH_EXEC_RETRY_LOG) 2>/dev/null | wc -l); \
	echo "bench-exec: $$n retries allowed by the harness$$([ $$n -gt 0 ] && echo :)"; \
	cat $(BENCH_EXEC_RETRY_LOG) 2>/dev/null | sed 's/^/  /'; \
	exit $$rc

# Instant clone: (a) berth-vmm restoring snapshots of the test guests on this host's KVM
# (restore time beside a cold boot in the same run, clones per second, private memory per
# clone); (b) `docker run` from clones, from cold boots and on Docker + runc (bench-run
# without its untar part); (c) density: idle containers at each of BENCH_DENSITY, their
# private memory and start latency, plotted to bench/results/density.png. (b) and (c) run
# directly where Linux guests run, else inside the emulated host.
BENCH_CLONE_RUNS ?= 30
BENCH_CLONES ?= 50
BENCH_DENSITY ?= 10,50,100
.PHONY: bench-clone
bench-clone: build test-deps
	$(RELEASE)/bench-clone --runs $(BENCH_CLONE_RUNS) --clones $(BENCH_CLONES)
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-run --runs $(BENCH_RUN_RUNS) --untar-runs 0; \
	else \
		echo "bench-clone: (b) berthd and dockerd run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-run \
			--runs $(BENCH_RUN_RUNS) --untar-runs 0; \
	fi
	@mkdir -p bench/results
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-density --counts $(BENCH_DENSITY) --csv bench/results/density.csv; \
	else \
		echo "bench-clone: (c) density inside the emulated virtualization host"; \
		$(VMHOST) --timeout 3600 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-density \
			--counts $(BENCH_DENSITY) --csv $(CURDIR)/bench/results/density.csv; \
	fi
	bench/plot-density bench/results/density.csv bench/results/density.png

# Networking: redis-benchmark (GET, SET) and iperf3 from the host through a port published
# on 127.0.0.1, berth beside Docker + runc (its docker-proxy, in a network namespace of the
# benchmark's own), interleaved: directly where Linux guests run, else both inside one
# emulated host.
BENCH_NET_RUNS ?= 5
BENCH_NET_REQUESTS ?= 100000
BENCH_NET_SECONDS ?= 5
.PHONY: bench-net
bench-net: build
	tests/deps/ensure bench
	@args="--runs $(BENCH_NET_RUNS) --requests $(BENCH_NET_REQUESTS) --seconds $(BENCH_NET_SECONDS)"; \
	if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-net $$args; \
	else \
		echo "bench-net: berthd and dockerd run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-net $$args; \
	fi

# File I/O through a bind mount and a named volume (bench-fsops, ours, in the container):
# sequential MB/s and small-file op/s, berth beside Docker + runc, interleaved: directly
# where Linux guests run, else both inside one emulated host.
BENCH_FS_RUNS ?= 5
BENCH_FS_MIB ?= 64
BENCH_FS_FILES ?= 2000
.PHONY: bench-fs
bench-fs: build
	tests/deps/ensure test
	@args="--runs $(BENCH_FS_RUNS) --mib $(BENCH_FS_MIB) --files $(BENCH_FS_FILES)"; \
	if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-fs $$args; \
	else \
		echo "bench-fs: berthd and dockerd run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-fs $$args; \
	fi

# docker push and docker pull of a ~100 MB 4-layer image against Debian's docker-registry
# on 127.0.0.1, berth beside Debian's dockerd, interleaved (no VM: on this host); then
# docker build of a 5-step Dockerfile, cold and cached, berth beside dockerd: directly where
# Linux guests run, else both daemons inside one emulated host.
BENCH_IMAGE_RUNS ?= 5
BENCH_IMAGE_MIB ?= 100
.PHONY: bench-image
bench-image: build test-deps
	$(RELEASE)/bench-image --runs $(BENCH_IMAGE_RUNS) --mib $(BENCH_IMAGE_MIB)
	@if $(RELEASE)/berth-vmm check >/dev/null; then \
		$(RELEASE)/bench-build --runs $(BENCH_IMAGE_RUNS); \
	else \
		echo "bench-image: the builds run inside the emulated virtualization host"; \
		$(VMHOST) --timeout 5400 -- env BERTH_TEST_DIR=/tmp $(RELEASE)/bench-build \
			--runs $(BENCH_IMAGE_RUNS); \
	fi

clean:
	$(CARGO) clean
