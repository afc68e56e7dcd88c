#!/bin/bash
# A guest that ends before reporting: this test writes the guest's own
# "passed" code to isa-debug-exit, so qemu exits with the "passed" status
# while no result line and no summary reached the console.  The host must
# fail the run.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
printf "\\x$(printf %02x "$VM_EXIT_PASS")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc status=none
sleep 60
