#!/usr/bin/env bash
# softhsm-setup.sh: a SoftHSM 2 token for hsmkeys, in one command.
#
#   scripts/softhsm-setup.sh [--dir DIR] [--label LABEL] [--reset] [--quiet]
#
# Makes DIR (default: .softhsm/ in the repository, git-ignored) holding its
# own softhsm2.conf, a token directory, random user and SO PINs in mode-0600
# files, and DIR/env, a file to source that sets SOFTHSM2_CONF,
# HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_PIN_FILE and HSMKEYS_SO_PIN_FILE.
# Idempotent: a second run changes nothing. --reset deletes DIR first.
# Installs softhsm2 with apt-get when it is missing and we are root.
# No PIN ever appears on a command line: the token is initialised by
# `hsmkeys init-token`, which reads the PIN files.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/.softhsm"
label="hsmkeys"
reset=0
quiet=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --label) label="$2"; shift 2 ;;
    --label=*) label="${1#--label=}"; shift ;;
    --reset) reset=1; shift ;;
    --quiet|-q) quiet=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "softhsm-setup: unknown argument: $1" >&2; exit 2 ;;
  esac
done
say() { [ "$quiet" = 1 ] || echo "softhsm-setup: $*" >&2; }

find_module() {
  for m in /usr/lib/softhsm/libsofthsm2.so \
           "/usr/lib/$(uname -m)-linux-gnu/softhsm/libsofthsm2.so" \
           /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && { echo "$m"; return 0; }
  done
  return 1
}

module=$(find_module || true)
if [ -z "$module" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing softhsm2"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >&2
    module=$(find_module)
  else
    echo "softhsm-setup: SoftHSM 2 is not installed; run: sudo apt-get install -y softhsm2" >&2
    exit 1
  fi
fi
command -v go >/dev/null 2>&1 || { echo "softhsm-setup: go is not on PATH" >&2; exit 1; }

if [ "$reset" = 1 ] && [ -d "$dir" ]; then
  say "removing $dir"
  rm -rf "$dir"
fi
umask 077
mkdir -p "$dir/tokens" "$dir/bin"
dir=$(cd "$dir" && pwd)
chmod 700 "$dir" "$dir/tokens"

conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
  cat > "$conf" <<CONF
# written by scripts/softhsm-setup.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi

newpin() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
for f in user.pin so.pin; do
  if [ ! -s "$dir/$f" ]; then
    newpin > "$dir/$f.tmp" && mv "$dir/$f.tmp" "$dir/$f"
  fi
  chmod 600 "$dir/$f"
done

export SOFTHSM2_CONF="$conf"
# A token with our label is there already: nothing to do.
if softhsm2-util --show-slots 2>/dev/null | awk -v l="$label" '
    /^ *Label:/ { sub(/^ *Label: */, ""); sub(/ +$/, ""); if ($0 == l) found = 1 }
    END { exit !found }'; then
  say "token \"$label\" exists in $dir"
else
  say "building hsmkeys"
  (cd "$root" && go build -o "$dir/bin/hsmkeys" ./cmd/hsmkeys)
  say "initialising token \"$label\""
  "$dir/bin/hsmkeys" --module "$module" init-token --label "$label" \
    --so-pin-file "$dir/so.pin" --pin-file "$dir/user.pin" >&2
fi

envfile="$dir/env"
cat > "$envfile.tmp" <<ENV
export SOFTHSM2_CONF='$conf'
export HSMKEYS_MODULE='$module'
export HSMKEYS_TOKEN='$label'
export HSMKEYS_PIN_FILE='$dir/user.pin'
export HSMKEYS_SO_PIN_FILE='$dir/so.pin'
ENV
if ! cmp -s "$envfile.tmp" "$envfile" 2>/dev/null; then
  mv "$envfile.tmp" "$envfile"
else
  rm -f "$envfile.tmp"
fi
say "environment written to $envfile (source it: . $envfile)"
[ "$quiet" = 1 ] || cat "$envfile"
