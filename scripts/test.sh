#!/usr/bin/env bash
# test.sh: the whole hsmkeys test suite, against real SoftHSM tokens that the
# tests create in temporary directories.
#
#   scripts/test.sh [extra go test flags]
#
# Installs what only the tests need (by Debian package name, when one is
# missing and we are root; otherwise says what to install): softhsm2,
# opensc (pkcs11-tool), gcc (the fault module and cgo), p11-kit and
# p11-kit-modules (the p11-kit proxy tests), libnss3-tools (the NSS softoken
# tests) and openssl. An installed package is never upgraded.
#
# The OpenSSL interop tests run against every openssl listed in
# HSMKEYS_TEST_OPENSSL (colon-separated, system first). Unset, it is the
# system's openssl and, when that one cannot read AuthEnvelopedData with
# authAttrs (OpenSSL before 3.0.22: openssl#26101, #31635), also the newest
# Debian build apt offers, fetched and unpacked beside it by
# scripts/openssl-versions.sh --fixed (nothing is installed). With CI set, a
# test that needs SoftHSM or openssl fails instead of skipping, and so does
# an interop test with no openssl that reads authAttrs.
#
# After the tests, every fuzz target runs briefly (HSMKEYS_FUZZTIME, default
# 20000x inputs each; 0 skips). A count, not a duration: with a duration,
# Go 1.26's fuzz coordinator can report a spurious "context deadline
# exceeded" when the time runs out (golang/go#75804, fixed in Go 1.27).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(softhsm2 opensc gcc p11-kit p11-kit-modules libnss3-tools openssl)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    [ -n "${CI:-}" ] && exit 1
  fi
fi

if [ -z "${HSMKEYS_TEST_OPENSSL:-}" ] && sys="$(command -v openssl)"; then
  HSMKEYS_TEST_OPENSSL="$sys"
  if ! scripts/openssl-versions.sh --probe "$sys"; then
    if fixed="$(scripts/openssl-versions.sh --fixed)"; then
      HSMKEYS_TEST_OPENSSL="$sys:$fixed"
    else
      echo "test.sh: $("$sys" version) cannot read authAttrs and no fixed openssl could be fetched" >&2
    fi
  fi
  export HSMKEYS_TEST_OPENSSL
fi
echo "test.sh: HSMKEYS_TEST_OPENSSL=${HSMKEYS_TEST_OPENSSL:-}" >&2

go test -race -count=1 -timeout 30m "$@" ./...

# The adapters: each integrations/NAME is its own Go module, built
# against this tree (replace => ../..), so ./... above does not reach it.
for m in integrations/*/; do
  [ -f "$m/go.mod" ] || continue # integrations/internal is the core module's
  (cd "$m" && go test -race -count=1 -timeout 30m "$@" ./...)
done

fuzztime="${HSMKEYS_FUZZTIME:-20000x}"
if [ "$fuzztime" != 0 ]; then
  # Every fuzz target, briefly, from its committed seed corpus.
  for pkg in $(go list ./...); do
    for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 20x "$pkg"
    done
  done
fi
