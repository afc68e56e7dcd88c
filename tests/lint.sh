#!/bin/bash
# Static checks of the module: checkpatch --strict and sparse, on the 6.1 and
# 6.12 headers.  Any finding fails.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/tests/vm/config.sh"
checkpatch="$FLEECE_CACHE/linux-source-6.1/scripts/checkpatch.pl"
files=("$src"/drivers/md/*.[ch] "$src"/include/*.h)
status=0

echo "lint: checkpatch --strict"
if ! "$checkpatch" --strict --no-tree --quiet --show-types \
	--ignore SPDX_LICENSE_TAG,FILE_PATH_CHANGES -f "${files[@]}"; then
	status=1
fi

for kver in "$KVER_6_1" "$KVER_6_12"; do
	echo "lint: sparse against $kver"
	b="$src/build/lint-$kver"
	mkdir -p "$b"
	rsync -a --delete --include='drivers/***' --include='include/***' \
		--include=Kbuild --exclude='*' "$src/" "$b/"
	out=$(make -s --no-print-directory -C "/usr/src/linux-headers-$kver" M="$b" C=2 \
		KCFLAGS="-Werror" modules 2>&1 | grep -v 'Skipping BTF generation' || true)
	if [ -n "$out" ]; then
		echo "$out"
		status=1
	fi
done
[ $status = 0 ] && echo "lint: clean"
exit $status
