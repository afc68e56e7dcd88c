#!/bin/bash
# make check-package: the Debian packages as an administrator meets them.
#
# usage: check.sh DEBDIR VERSION OUTDIR   (as root, on the build machine)
#
#  1. install dm-fleece-dkms and fleece from DEBDIR with apt (their
#     dependencies from the archive);
#  2. the package's configuration has DKMS build and install the module for
#     each kernel with headers (6.1 and 6.12 here); then, as a kernel upgrade
#     does, the kernel hook /etc/kernel/postinst.d/dkms builds it again for
#     6.12 after that build was removed;
#  3. for each kernel in PACKAGE_VM_KVERS (default both), a VM loads the
#     module DKMS built (not the build tree's) and tests/package/ runs a
#     backup through the installed /usr/sbin/fleece (the guest sees this
#     machine's root);
#  4. purging the packages removes the module builds, the command, its
#     udev rules and man page.
# Packages of the same names installed before are purged first: this
# script is for build and CI machines, never a host that uses fleece.
set -euo pipefail
debdir=$1 version=$2 out=$3/package
mkdir -p "$out"
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tests/vm/config.sh"
fail() { echo "check-package: FAIL: $*" >&2; exit 1; }
step() { echo "=== check-package: $* ($(date +%T))"; }

[ "$(id -u)" = 0 ] || fail "must be run as root (it installs packages)"
dkms_deb=$debdir/dm-fleece-dkms_${version}_all.deb
cli_deb=$(ls "$debdir"/fleece_"${version}"_*.deb | grep -v dbgsym | head -n 1)
[ -f "$dkms_deb" ] && [ -f "$cli_deb" ] || fail "no packages of version $version in $debdir (make deb)"
"$src/tests/vm/deps.sh"

export DEBIAN_FRONTEND=noninteractive
purge() {
	apt-get purge -y -qq fleece dm-fleece-dkms > /dev/null 2>&1 || true
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
if installed fleece || installed dm-fleece-dkms; then
	step "purging the packages installed before"
	purge
fi

step "installing $(basename "$dkms_deb") $(basename "$cli_deb")"
apt-get install -y -qq --no-install-recommends "$dkms_deb" "$cli_deb" > "$out/apt.log" 2>&1 ||
	{ cat "$out/apt.log"; fail "apt-get install failed"; }
installed dm-fleece-dkms || fail "dm-fleece-dkms is not installed"
installed fleece || fail "fleece is not installed"
[ "$(/usr/sbin/fleece --version)" = "fleece $version" ] ||
	fail "/usr/sbin/fleece --version: '$(/usr/sbin/fleece --version)', not 'fleece $version'"
[ -f /usr/lib/udev/rules.d/60-fleece.rules ] || fail "no udev rules in /usr/lib/udev/rules.d"
[ -f /usr/share/man/man8/fleece.8.gz ] || fail "no manual page /usr/share/man/man8/fleece.8.gz"

# The path of DKMS's build of the module for a kernel, after checking that
# DKMS says it is installed and that the file installed is that build.
dkms_module() { # kver
	local kver=$1 ko inst
	dkms status "dm-fleece/$version" -k "$kver" | grep -q ': installed' ||
		fail "DKMS has not installed dm-fleece for $kver: $(dkms status "dm-fleece/$version" -k "$kver")"
	ko=$(ls /var/lib/dkms/dm-fleece/"$version"/"$kver"/x86_64/module/dm-fleece.ko* | head -n 1)
	inst=$(ls /lib/modules/"$kver"/updates/dkms/dm-fleece.ko* | head -n 1)
	cmp -s "$ko" "$inst" || fail "$inst differs from DKMS's build $ko"
	echo "$ko"
}
for kver in "$KVER_6_1" "$KVER_6_12"; do
	dkms_module "$kver" > /dev/null
done
step "kernel upgrade: the build for $KVER_6_12 removed, then /etc/kernel/postinst.d/dkms $KVER_6_12"
dkms remove -q "dm-fleece/$version" -k "$KVER_6_12" > "$out/dkms-remove.log" 2>&1 ||
	{ cat "$out/dkms-remove.log"; fail "dkms remove for $KVER_6_12 failed"; }
! ls /lib/modules/"$KVER_6_12"/updates/dkms/dm-fleece.ko* 2>/dev/null ||
	fail "dkms remove left the module of $KVER_6_12"
/etc/kernel/postinst.d/dkms "$KVER_6_12" > "$out/dkms-hook.log" 2>&1 ||
	{ cat "$out/dkms-hook.log"; fail "the kernel hook of DKMS failed for $KVER_6_12"; }

rc=0
for kver in ${PACKAGE_VM_KVERS:-$KVER_6_1 $KVER_6_12}; do
	ko=$(dkms_module "$kver")
	# The guest sees /lib/modules/$kver of the unpacked kernel, not this
	# machine's: it loads DKMS's build from DKMS's tree (compared above
	# with the file installed).
	step "VM on $kver: $ko and /usr/sbin/fleece"
	kmodroot=$FLEECE_CACHE/kernel/$kver/root
	"$src/tests/vm/run.sh" "$kver" "$kmodroot/boot/vmlinuz-$kver" "$kmodroot" "$ko" \
		"$out/$kver" package "" || rc=1
done
[ $rc = 0 ] || fail "the VM run failed on a kernel (above; logs in $out/)"

step "purging the packages"
apt-get purge -y -qq fleece dm-fleece-dkms > "$out/purge.log" 2>&1 ||
	{ cat "$out/purge.log"; fail "apt-get purge failed"; }
left=$(ls /lib/modules/*/updates/dkms/dm-fleece.ko* /var/lib/dkms/dm-fleece \
	/usr/src/dm-fleece-"$version" /usr/sbin/fleece /usr/lib/udev/rules.d/60-fleece.rules 2>/dev/null || true)
[ -z "$left" ] || fail "left after purging the packages: $left"
step "ok: installed, built by DKMS for $KVER_6_1 and $KVER_6_12 (and again by the kernel hook), a backup in a VM on ${PACKAGE_VM_KVERS:-both}, purged"
