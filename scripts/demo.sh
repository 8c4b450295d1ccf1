#!/usr/bin/env bash
# demo.sh: the main job, end to end, on a fresh machine: make a SoftHSM token
# (scripts/softhsm-setup.sh), then run hsmkeys against it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/softhsm-setup.sh --quiet
. .softhsm/env
go build -o .softhsm/bin/hsmkeys ./cmd/hsmkeys
hsmkeys=.softhsm/bin/hsmkeys
echo "== hsmkeys tokens"
"$hsmkeys" tokens
echo "== hsmkeys selftest"
"$hsmkeys" selftest
