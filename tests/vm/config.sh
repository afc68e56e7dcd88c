# Shared settings for the VM harness. Sourced, not run.
# The Debian kernel ABIs we test against; override from the environment.
: "${KVER_6_1:=6.1.0-56-amd64}"
: "${KVER_6_12:=6.12.107+deb12-amd64}"
: "${FLEECE_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/dm-fleece}"
export KVER_6_1 KVER_6_12 FLEECE_CACHE
