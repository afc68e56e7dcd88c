#!/bin/bash
# FLEECE_STATE_DIR and FLEECE_LOCK_DIR decide what stop removes and which
# commands exclude each other: start, stop and status refuse (exit 3, the
# problem named, nothing created or changed) a directory that is a symbolic
# link, owned by another user, writable by group or others, or under a
# directory that is; a root-owned 0700 one under sticky /tmp is fine.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
data=$(mkdev data 16)
table=$(dmsetup table data)
fl=$(mkdev fl 16 1)
good=$PWD/good
mkdir -m 0700 "$good" "$good/lock"
shopt -s nullglob

# Run "$@" with the directories given; it must be refused, naming the problem.
refused() { # state_dir lock_dir message-glob what command...
	local sd=$1 ld=$2 want=$3 what=$4 f
	shift 4
	expect_exit 3 env FLEECE_STATE_DIR="$sd" FLEECE_LOCK_DIR="$ld" "$@"
	echo "$T_ERR"
	[[ $T_ERR == $want ]] || fail "$what: not the reason expected ($want): $T_ERR"
	[ -z "$(dmsetup info -c --noheadings -o uuid | grep '^FLEECE-' || true)" ] ||
		fail "$what: FLEECE- devices created"
	assert_eq "$(dmsetup table data)" "$table" "$what: data's table"
	f=("$sd"/data* "$ld"/data*)
	[ ${#f[@]} = 0 ] || fail "$what: files created: ${f[*]}"
}

step "the state directory"
mkdir -m 0700 real
ln -s real link
refused "$PWD/link" "$good/lock" "*FLEECE_STATE_DIR $PWD/link: is a symbolic link: refusing to use it*" \
	"a symbolic link" $F start --fleece-dev "$fl" data
mkdir -m 0770 gw && chmod 0770 gw
refused "$PWD/gw" "$good/lock" "*FLEECE_STATE_DIR $PWD/gw: $PWD/gw is writable by its group (mode 0770)*" \
	"group-writable" $F start --fleece-dev "$fl" data
mkdir ww && chmod 0777 ww
refused "$PWD/ww" "$good/lock" "*$PWD/ww is writable by others (mode 0777)*" \
	"world-writable" $F start --fleece-dev "$fl" data
mkdir -m 0700 nb && chown nobody nb
refused "$PWD/nb" "$good/lock" "*$PWD/nb is owned by uid $(id -u nobody), not by root*" \
	"owned by nobody" $F start --fleece-dev "$fl" data
mkdir -m 0755 pn && chown nobody pn
refused "$PWD/pn/state" "$good/lock" "*FLEECE_STATE_DIR $PWD/pn/state: $PWD/pn is owned by uid $(id -u nobody)*" \
	"a new directory under one owned by nobody" $F start --fleece-dev "$fl" data
[ ! -e pn/state ] || fail "the state directory was created under pn"
refused "$PWD/ww" "$good/lock" "*writable by others*" "stop" $F stop data
refused "$PWD/ww" "$good/lock" "*writable by others*" "status" $F status
refused "$PWD/ww" "$good/lock" "*writable by others*" "backup" $F backup --fleece-dev "$fl" data -o out.img
[ ! -e out.img ] && [ ! -e out.img.partial ] || fail "the refused backup created output"

step "the lock directory"
refused "$good" "$PWD/ww" "*FLEECE_LOCK_DIR $PWD/ww: $PWD/ww is writable by others (mode 0777)*" \
	"a world-writable lock directory" $F start --fleece-dev "$fl" data
refused "$good" "$PWD/link" "*FLEECE_LOCK_DIR $PWD/link: is a symbolic link*" \
	"a symbolic link as lock directory" $F start --fleece-dev "$fl" data

step "root's own directories (under sticky /tmp, and new ones) are used"
assert_eq "$(stat -c %a /tmp)" 1777 "mode of /tmp"
FLEECE_STATE_DIR=$good FLEECE_LOCK_DIR=$good/lock $F start -q --fleece-dev "$fl" data
[ -e "$good/data" ] && [ -e "$good/lock/data.lock" ] || fail "no state or lock file in $good"
FLEECE_STATE_DIR=$good FLEECE_LOCK_DIR=$good/lock $F stop -q data
FLEECE_STATE_DIR=$PWD/new FLEECE_LOCK_DIR=$PWD/newlock $F start -q --fleece-dev "$fl" data
assert_eq "$(stat -c %a new) $(stat -c %a newlock)" "700 700" "modes of the new directories"
FLEECE_STATE_DIR=$PWD/new FLEECE_LOCK_DIR=$PWD/newlock $F stop -q data
assert_eq "$(dmsetup table data)" "$table" "data's table after stop"
no_fleece_devices
step "ok"
