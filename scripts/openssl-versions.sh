#!/usr/bin/env bash
# openssl-versions.sh: Debian's builds of OpenSSL beside the system's, for
# the interop tests, without installing them.
#
#   scripts/openssl-versions.sh VERSION...   fetch each, print its wrapper's path
#   scripts/openssl-versions.sh --all        every version apt offers (madison), oldest first
#   scripts/openssl-versions.sh --fixed      print one openssl that reads authAttrs:
#                                            the system's if it does, else the
#                                            newest version apt offers
#   scripts/openssl-versions.sh --probe CMD  exit 0 if CMD reads authAttrs
#
# VERSION is a Debian version (3.0.22-1~deb12u2) or an upstream one (3.0.22)
# that `apt-cache madison openssl` resolves. Each is fetched with
# `apt-get download openssl=V libssl3=V`, unpacked with `dpkg -x` into
# $HSMKEYS_OPENSSL_CACHE/V (default ~/.cache/hsmkeys/openssl, outside the
# repository), and run through a wrapper that points LD_LIBRARY_PATH and
# OPENSSL_MODULES at its own libssl. Nothing is installed; the system's
# openssl and libssl3 stay as they are. A wrapper is checked with `version`
# before it is printed.
#
# "Reads authAttrs" is decided by a probe, not by the version number:
# OpenSSL before 3.0.22 (and the 3.5.x/3.6.x releases before mid-2026)
# cannot parse an AuthEnvelopedData with authAttrs nor authenticate them
# (openssl#26101, #31635; fixed by #31695), and a distribution may backport
# the fix. The probe, internal/testopenssl/probe-authattrs.pem, is an
# AES-256-GCM message under a published KEK (bytes 00..1f, id
# "hsmkeys-probe") whose authAttrs hold a content type and an encryption
# context; it passes only if openssl decrypts it to the expected text, which
# needs the attributes parsed and fed to GCM as AAD.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${HSMKEYS_OPENSSL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/hsmkeys/openssl}"
probe_kek=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
probe_id=68736d6b6579732d70726f6265 # "hsmkeys-probe"

say() { echo "openssl-versions: $*" >&2; }

# probe CMD: does CMD decrypt the authAttrs probe?
probe() {
  local got
  got="$("$1" cms -decrypt -binary -inform PEM -in "$root/internal/testopenssl/probe-authattrs.pem" \
    -secretkey "$probe_kek" -secretkeyid "$probe_id" 2>/dev/null)" || return 1
  [ "$got" = "hsmkeys openssl probe: authattrs" ]
}

# versions: every Debian version of openssl that apt offers, newest first.
versions() {
  apt-cache madison openssl 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -uVr
}

# resolve V: the Debian version for V (exact, or the newest whose upstream
# part is V).
resolve() {
  local v
  v="$(versions | awk -v want="$1" '$0 == want || index($0, want "-") == 1' | head -n1)"
  if [ -z "$v" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 # apt's lists may predate the version
    v="$(versions | awk -v want="$1" '$0 == want || index($0, want "-") == 1' | head -n1)"
  fi
  [ -n "$v" ] || { say "apt offers no openssl $1 (apt-cache madison openssl)"; return 1; }
  echo "$v"
}

# fetch V: unpack openssl and libssl3 of Debian version V, write the
# wrapper, check it, print its path.
fetch() {
  local v dir wrapper tmp lib
  v="$(resolve "$1")" || return 1
  dir="$cache/$v"
  wrapper="$dir/openssl"
  if [ ! -x "$wrapper" ] || ! "$wrapper" version >/dev/null 2>&1; then
    rm -rf "$dir"
    mkdir -p "$cache"
    tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
    chmod 755 "$tmp" # apt-get download as root hands the file to _apt
    if ! (cd "$tmp" && apt-get download -qq "openssl=$v" "libssl3=$v" >/dev/null 2>&1); then
      rm -rf "$tmp"
      say "apt-get download openssl=$v libssl3=$v failed"
      return 1
    fi
    mkdir -p "$tmp/root"
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    lib="$(dirname "$(find "$tmp/root" -name 'libssl.so.3' | head -n1)")"
    [ -d "$lib/ossl-modules" ] || { rm -rf "$tmp"; say "openssl $v: no ossl-modules in libssl3"; return 1; }
    lib="${lib#"$tmp"/root}"
    rm -f "$tmp"/*.deb
    cat >"$tmp/openssl" <<EOF
#!/bin/sh
# Debian's openssl $v with its own libssl3 (scripts/openssl-versions.sh).
d="\$(dirname "\$0")/root"
LD_LIBRARY_PATH="\$d$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" OPENSSL_MODULES="\$d$lib/ossl-modules" exec "\$d/usr/bin/openssl" "\$@"
EOF
    chmod 755 "$tmp/openssl"
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp" # another run may have won
  fi
  local want="${v%%-*}" got
  got="$("$wrapper" version 2>&1)" || { say "$wrapper version: $got"; return 1; }
  case "$got" in
  "OpenSSL $want "*"(Library: OpenSSL $want "*) ;;
  *) say "$wrapper says \"$got\", not $want with its own library"; return 1 ;;
  esac
  echo "$wrapper"
}

case "${1:-}" in
--probe)
  [ $# = 2 ] || { say "usage: $0 --probe CMD"; exit 2; }
  probe "$2"
  ;;
--all)
  [ $# = 1 ] || { say "usage: $0 --all"; exit 2; }
  vs="$(versions)"
  [ -n "$vs" ] || { [ "$(id -u)" = 0 ] && apt-get update -qq >&2; vs="$(versions)"; }
  for v in $(echo "$vs" | sort -V); do fetch "$v"; done # oldest first
  ;;
--fixed)
  [ $# = 1 ] || { say "usage: $0 --fixed"; exit 2; }
  if sys="$(command -v openssl)" && probe "$sys"; then
    echo "$sys"
    exit 0
  fi
  vs="$(versions)"
  [ -n "$vs" ] || { [ "$(id -u)" = 0 ] && apt-get update -qq >&2; vs="$(versions)"; }
  newest="$(echo "$vs" | head -n1)"
  [ -n "$newest" ] || { say "apt offers no openssl (run apt-get update)"; exit 1; }
  w="$(fetch "$newest")" || exit 1
  probe "$w" || { say "openssl $newest, the newest apt offers, cannot read authAttrs either"; exit 1; }
  echo "$w"
  ;;
"" | -*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
  ;;
*)
  for v in "$@"; do fetch "$v"; done
  ;;
esac
