# The two commands a new machine needs:  make demo  and  make test
VENV := .venv
BIN := $(VENV)/bin
# chromium opens the HTML report in the report tests; clang, llvm (llvm-strip) and libbpf-dev
# build the eBPF backend's object (make bpf), which libbpf1 loads.
BPF_BUILD_PACKAGES := clang llvm libbpf-dev libbpf1
DEBIAN_TEST_PACKAGES := chromium $(BPF_BUILD_PACKAGES) trace-cmd linux-perf
# The eBPF backend's CO-RE object: built here once, loaded on any kernel with BTF (no compiler there).
BPF_OBJECT := collect/kmem.bpf.o
BPF_ARCH := $(subst x86_64,x86,$(subst aarch64,arm64,$(shell uname -m)))

# The collector's inner loops (collect/walks.c), loaded with ctypes: plain C, for any compiler
# that builds pip's compiled packages; no CPU-specific code, so the lab's emulated CPUs run it too.
NATIVE := collect/walks.so

.PHONY: setup demo test test-packages bench bpf native lab lab-packages

# -qq: pip still prints errors, but not this machine kind's warnings about index folders
# its global configuration names and that hold no copy of a package.
$(BIN)/chargeplay: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[test]'
	touch $@

$(NATIVE): collect/walks.c
	cc -O2 -Wall -Wextra -shared -fPIC $< -o $@

native: $(NATIVE)

setup: $(BIN)/chargeplay $(NATIVE)

demo: setup
	$(BIN)/chargeplay demo

test-packages:
	@missing=$$(for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# -g: the object's BTF, which CO-RE relocation needs; llvm-strip -g drops the DWARF, keeps BTF.
$(BPF_OBJECT): collect/kmem.bpf.c
	clang -O2 -g -Wall -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -I/usr/include/$(shell uname -m)-linux-gnu -c $< -o $@
	llvm-strip -g $@

bpf: $(BPF_OBJECT)

test: setup test-packages bpf
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/replay_speed.py

# The kernel lab (README, "The kernel lab"): Debian's 6.1 and 6.12 kernels booted under qemu by
# virtme-ng over this machine's own root file system, with cgroup v2. The image packages also
# pull initramfs-tools, which writes /boot/initrd.img-*; this machine boots through neither
# grub nor /boot, so nothing about its own boot changes (there is no update-grub to run).
LAB_DEBIAN_PACKAGES := qemu-system-x86 busybox-static e2fsprogs linux-image-amd64 linux-image-6.12-amd64 $(BPF_BUILD_PACKAGES)

# Inside the guests polars's default runtime (built for AVX2 and friends, which qemu emulates)
# crashed with SIGSEGV scanning a 260,000-event trace, on 6.1 and 6.12 alike; its compat runtime,
# built for older CPUs, reads it. It goes beside the venv, for the guests only (lab/guest.sh).
LAB_POLARS := $(VENV)/polars-compat

lab-packages: setup
	@missing=$$(for p in $(LAB_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the kernel lab: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi
	@$(BIN)/python -c 'import virtme_ng' 2>/dev/null || $(BIN)/pip install -qq -e '.[test,lab]'
	@v=$$($(BIN)/python -c 'import polars; print(polars.__version__)'); \
	[ -d $(LAB_POLARS)/polars_runtime_compat-$$v.dist-info ] || \
	$(BIN)/pip install -qq --upgrade --target $(LAB_POLARS) polars-runtime-compat==$$v

# The lab tests (tests/kernel_lab: each kernel boots and has cgroup v2, tracefs, BTF, kprobes and
# an enforced memory.high), then the live tests inside each kernel (python -m lab live).
lab: lab-packages bpf
	$(BIN)/pytest -m lab tests/kernel_lab
	$(BIN)/python -m lab live --kernel all
