#!/usr/bin/env bash
# test.sh: the whole hsmkeys test suite, against real SoftHSM tokens that the
# tests create in temporary directories.
#
#   scripts/test.sh [extra go test flags]
#
# Installs softhsm2, opensc (pkcs11-tool) and openssl with apt-get when one is
# missing and we are root; otherwise says what to install. With CI set, a
# test that needs SoftHSM fails instead of skipping. After the tests, every
# fuzz target runs briefly (HSMKEYS_FUZZTIME, default 20000x inputs each; 0
# skips). A count, not a duration: with a duration, Go 1.26's fuzz
# coordinator can report a spurious "context deadline exceeded" when the
# time runs out (golang/go#75804, fixed in Go 1.27).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "test.sh: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    [ -n "${CI:-}" ] && exit 1
  fi
fi

go test -race -count=1 -timeout 30m "$@" ./...

# --- adapters (h14integ): each integrations/NAME is its own Go module, built
# against this tree (replace => ../..), so ./... above does not reach it.
for m in integrations/*/; do
  [ -f "$m/go.mod" ] || continue # integrations/internal is the core module's
  (cd "$m" && go test -race -count=1 -timeout 30m "$@" ./...)
done
# --- end adapters

fuzztime="${HSMKEYS_FUZZTIME:-20000x}"
if [ "$fuzztime" != 0 ]; then
  # Every fuzz target, briefly, from its committed seed corpus.
  for pkg in $(go list ./...); do
    for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 20x "$pkg"
    done
  done
fi
