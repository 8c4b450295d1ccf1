#!/usr/bin/env bash
# openssl-table.sh: measure, for the system's openssl and every Debian build
# of openssl apt offers (fetched beside it by scripts/openssl-versions.sh,
# nothing installed), what each opens of ours and whether we open its
# output; prints the table in docs/format.md. Needs SoftHSM, like the tests.
#
#   scripts/openssl-table.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
list="$(command -v openssl)"
for w in $(scripts/openssl-versions.sh --all); do list="$list:$w"; done
HSMKEYS_TEST_OPENSSL="$list" HSMKEYS_OPENSSL_TABLE=1 \
  go test -count=1 -v -run '^TestOpenSSLTable$' ./provider | grep -E '^[|]|FAIL|Error'
