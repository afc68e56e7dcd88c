#!/bin/bash
# Randomized, model-checked stress: tests/stress/fleece-stress.py drives
# origin writes, write-zeroes and discards, view reads and releases,
# suspends, policy reloads and fleece-device faults (slow, stalled,
# failing writes) at once, against a model of the point-in-time content
# and of the origin.  It prints its seed: FLEECE_STRESS_SEED=<seed> on the
# kernel command line (fleece.stress_seed=) repeats a run;
# fleece.stress_seconds= sets its length (60 s in the CI tier, 600 s in
# the longer tier, TIER=long).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

seconds=$(arg fleece.stress_seconds)
seed=$(arg fleece.stress_seed)
[ -n "$seed" ] && export FLEECE_STRESS_SEED=$seed

origin=$(mkdev st-origin 16)
mkpattern pat 16 stress
put pat "$origin"
slice=$(mkdev st-slice 16 1)
python3 "$SRC/tests/stress/fleece-stress.py" --origin "$origin" --slice "$slice" \
	--name st --mib 16 --seconds "${seconds:-$(tiered 60 600)}" --round 15
for d in st-fo st-fv st-fl; do
	! dmsetup info "$d" > /dev/null 2>&1 || fail "$d left behind"
done
