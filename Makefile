# The two commands a new machine needs:  make demo  and  make test
VENV := .venv
BIN := $(VENV)/bin
# chromium opens the HTML report in the report tests; python3-bpfcc (bcc) and Debian's
# kernel headers (linux-headers-amd64: the 6.1 ones, which bcc compiles against) run the eBPF tests.
DEBIAN_TEST_PACKAGES := chromium python3-bpfcc linux-headers-amd64
KERNEL_MODULES := /lib/modules/$(shell uname -r)

.PHONY: setup demo test test-packages bench lab lab-packages

# -qq: pip still prints errors, but not this machine kind's warnings about index folders
# its global configuration names and that hold no copy of a package.
$(BIN)/chargeplay: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[test]'
	touch $@

setup: $(BIN)/chargeplay

demo: setup
	$(BIN)/chargeplay demo

test-packages:
	@missing=$$(for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# bcc looks for headers at /lib/modules/$$(uname -r)/{build,source}: link the Debian ones
	@# there unless the running kernel has its own (idempotent).
	@headers=$$(dpkg -L linux-headers-amd64 >/dev/null 2>&1 && \
		dpkg-query -W -f='$${Depends}' linux-headers-amd64 | grep -o 'linux-headers-[^ ,]*-amd64' | head -1); \
	if [ -n "$$headers" ] && [ -d /usr/src/$$headers ] && [ ! -e $(KERNEL_MODULES)/build/include ]; then \
		mkdir -p $(KERNEL_MODULES) && \
		ln -sfn /usr/src/$$headers $(KERNEL_MODULES)/build && \
		ln -sfn /usr/src/$$(echo $$headers | sed 's/-amd64$$/-common/') $(KERNEL_MODULES)/source && \
		echo "linked $(KERNEL_MODULES)/build and source to /usr/src/$$headers (for bcc)"; \
	fi

test: setup test-packages
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/replay_speed.py

# The kernel lab (README, "The kernel lab"): Debian's 6.1 and 6.12 kernels booted under qemu by
# virtme-ng over this machine's own root file system, with cgroup v2. The image packages also
# pull initramfs-tools, which writes /boot/initrd.img-*; this machine boots through neither
# grub nor /boot, so nothing about its own boot changes (there is no update-grub to run).
LAB_DEBIAN_PACKAGES := qemu-system-x86 busybox-static \
	linux-image-amd64 linux-headers-amd64 linux-image-6.12-amd64 linux-headers-6.12-amd64

lab-packages: setup
	@missing=$$(for p in $(LAB_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the kernel lab: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi
	@$(BIN)/python -c 'import virtme_ng' 2>/dev/null || $(BIN)/pip install -qq -e '.[test,lab]'

# The lab tests (tests/kernel_lab: each kernel boots and has cgroup v2, tracefs, BTF, kprobes and
# an enforced memory.high), then the live tests inside each kernel (python -m lab live).
lab: lab-packages
	$(BIN)/pytest -m lab tests/kernel_lab
	$(BIN)/python -m lab live --kernel all
