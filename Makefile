# dm-fleece: top-level build, test and lint entry points.
#
#   make                 module (against KDIR) and tools
#   make demo            the main job end to end, in a VM
#   make check           the test suite in a VM (KVER=..., KERNEL=debug, T=pattern)
#   make check-crash     crash and reboot tests of change tracking in VMs
#                        (KVER=..., CRASH_MOMENTS=...; tests/vm/crash.sh)
#   make bench           fio benchmarks in a VM (T=pattern, DISK=file, ICOUNT=)
#   make lint            checkpatch --strict and sparse on the module
#   make unit            host-side unit tests of the tools (no VM, seconds)
#   make install         module and tools on this host
#   make deb             Debian packages dm-fleece-dkms and fleece, in $(BUILD)/deb
#   make check-package   build and install the packages, DKMS-build the module for
#                        6.1 and 6.12, back up through them in a VM, remove them

KVER_DEFAULT := $(shell . tests/vm/config.sh && echo $$KVER_6_1)
KVER        ?= $(KVER_DEFAULT)
KDIR        ?= /lib/modules/$(shell uname -r)/build
CACHE       := $(shell . tests/vm/config.sh && echo $$FLEECE_CACHE)
BUILD       ?= $(CURDIR)/build
OUT         ?= $(BUILD)/results
T           ?=
KERNEL      ?= debian
WERROR      ?= 0
PREFIX      ?= /usr/local

MODULE_SRCS := Kbuild $(wildcard drivers/md/*.[ch] include/*.h)

.PHONY: all module tools check check-crash selftest demo bench lint unit install clean deps deb check-package

all: module tools

# The module for the running host (make install) or any KDIR.
module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) W=$(if $(filter 1,$(WERROR)),,) \
		KCFLAGS="$(if $(filter 1,$(WERROR)),-Werror)" modules

tools:
	$(MAKE) -C tools WERROR=$(WERROR)

deps:
	@tests/vm/deps.sh

# Build the module in a per-kernel copy of the sources, so builds for
# several kernels never share object files.
# $(1): kernel release, $(2): KDIR
define build_for
	mkdir -p $(BUILD)/$(1) && \
	rsync -a --delete --include='drivers/***' --include='include/***' \
		--include=Kbuild --exclude='*' ./ $(BUILD)/$(1)/ && \
	$(MAKE) -s -C $(2) M=$(BUILD)/$(1) KCFLAGS=-Werror modules
endef

# VM runs: the kernel is Debian's $(KVER), or the debug kernel.  $(1): a
# command, run with KVER, KIMAGE, KMODROOT and KDIR set and the module
# built for KVER.
define vm_prep
	@tests/vm/deps.sh
	@$(MAKE) -s tools WERROR=1
	@set -e; \
	if [ "$(KERNEL)" = debug ]; then \
		eval "$$(tests/vm/debug-kernel.sh)"; \
		export VM_MEM=$${VM_MEM:-3G} VM_UDEV=$${VM_UDEV:-0}; \
		export TEST_TIMEOUT=$${TEST_TIMEOUT:-3600} VM_TIMEOUT=$${VM_TIMEOUT:-14400}; \
	else \
		KVER=$(KVER); KDIR=/usr/src/linux-headers-$(KVER); \
		KMODROOT=$(CACHE)/kernel/$(KVER)/root; \
		KIMAGE=$$KMODROOT/boot/vmlinuz-$(KVER); \
	fi; \
	$(call build_for,$$KVER,$$KDIR); \
	$(1)
endef

# $(1): the suite (a folder under tests/)
vm_run = $(call vm_prep,tests/vm/run.sh $$KVER $$KIMAGE $$KMODROOT \
	$(BUILD)/$$KVER/dm-fleece.ko $(OUT)/$(1)-$$KVER $(1) "$(T)")

check:
	$(call vm_run,cases)

# Change tracking across reboots and hard kills of the VM, one persistent
# disk image, a dozen boots (tests/vm/crash.sh says which).
check-crash:
	$(call vm_prep,tests/vm/crash.sh $$KVER $$KIMAGE $$KMODROOT \
		$(BUILD)/$$KVER/dm-fleece.ko $(OUT)/crash-$$KVER)

# The harness must fail every run it should: a kernel splat, a test that
# fails or hangs, a qemu that cannot start, a guest that ends without its
# report, a T= that selects no test; and the test scripts must refuse to
# run outside the VM.  tests/vm/selftest.sh proves each (and that a passing
# run passes), in small VMs.
selftest:
	$(call vm_prep,tests/vm/selftest.sh $$KVER $$KIMAGE $$KMODROOT \
		$(BUILD)/$$KVER/dm-fleece.ko $(OUT)/selftest-$$KVER)

demo:
	$(call vm_run,demo)

# DISK=FILE: the benchmarks run on a file-backed virtio disk instead of
# ram disks (FILE is created sparse if missing).  On ram disks the guest's
# clock counts instructions (ICOUNT=3: 8 ns each; ICOUNT= for the host's
# clock): the ratios then measure work per I/O and repeat to within 1%.
# A disk's latency is host time, so DISK runs keep the host's clock.
ICOUNT      ?= 3
# The commit the run is of: taken when make starts, not when the report is.
BENCH_COMMIT := $(shell git describe --always --dirty --abbrev=7 2>/dev/null)
bench: export VM_DISK = $(if $(DISK),$(abspath $(DISK)))
bench: export VM_ICOUNT = $(if $(DISK),,$(ICOUNT))
bench:
	$(call vm_run,bench)
	@FLEECE_COMMIT=$(BENCH_COMMIT) \
		tests/bench/report.py --save tests/bench/results $$(ls -dt $(OUT)/bench-*/ | head -n 1)

# The packages are built from the files git tracks (with their changes in
# the work tree), in a copy: the source tree stays clean.  lintian runs on
# the result and any error fails the build.
DEB_VERSION := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
deb:
	@tests/vm/deps.sh
	@grep -q '^#define FLEECE_VERSION.*"$(DEB_VERSION)"' tools/fleece.h || \
		{ echo "debian/changelog's version $(DEB_VERSION) is not tools/fleece.h's FLEECE_VERSION" >&2; exit 1; }
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/dm-fleece-$(DEB_VERSION)
	git ls-files -z | rsync -a --from0 --files-from=- ./ $(BUILD)/deb/dm-fleece-$(DEB_VERSION)/
	cd $(BUILD)/deb/dm-fleece-$(DEB_VERSION) && dpkg-buildpackage -us -uc -b
	lintian --fail-on error --info $(BUILD)/deb/dm-fleece_$(DEB_VERSION)_*.changes

# KVER and KERNEL do not apply: both Debian kernels, one VM each.
check-package: deb
	tests/vm/package-check.sh $(BUILD)/deb $(DEB_VERSION) $(OUT)

lint:
	@tests/vm/deps.sh
	@tests/lint.sh

# The tools' pure parts (parsers, state files, the output's FILE.partial,
# SHA-256), tested on this host under valgrind: tests/unit/unit.c.
unit:
	@tests/vm/deps.sh
	$(MAKE) -C tools check WERROR=1

install: all
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules_install
	depmod -a $(notdir $(patsubst %/build,%,$(KDIR))) 2>/dev/null || depmod -a
	$(MAKE) -C tools install PREFIX=$(PREFIX)

clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) clean 2>/dev/null
	-$(MAKE) -C tools clean
	rm -rf $(BUILD)
