#!/usr/bin/env bash
# softhsm-setup.sh: a SoftHSM 2 token for hsmkeys, in one command.
#
#   scripts/softhsm-setup.sh [--dir DIR] [--pin-dir PINDIR] [--label LABEL] [--reset] [--quiet]
#
# Makes DIR (default: .softhsm/ in the repository, git-ignored) holding its
# own softhsm2.conf, a token directory and DIR/env, a file to source that
# sets SOFTHSM2_CONF, HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_PIN_FILE and
# HSMKEYS_SO_PIN_FILE. The random user and SO PINs go to mode-0600 files in
# PINDIR, apart from DIR (default: ~/.config/hsmkeys/softhsm-pins/ID, ID
# derived from DIR), so that a copy or backup of DIR holds no PIN.
# Idempotent: a second run changes nothing. --reset deletes DIR and its PINs.
# Installs softhsm2 with apt-get when it is missing and we are root.
# No PIN ever appears on a command line: the token is initialised by
# `hsmkeys init-token`, which reads the PIN files.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/.softhsm"
pindir=""
label="hsmkeys"
reset=0
quiet=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --pin-dir) pindir="$2"; shift 2 ;;
    --pin-dir=*) pindir="${1#--pin-dir=}"; shift ;;
    --label) label="$2"; shift 2 ;;
    --label=*) label="${1#--label=}"; shift ;;
    --reset) reset=1; shift ;;
    --quiet|-q) quiet=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The PINs live apart from the token directory: a copy of DIR (a backup, a
# tarball sent with a bug report) must not carry the SO and user PINs with
# the token they open. Derived from DIR's absolute path, so that two
# setups never share PINs.
absdir=$(mkdir -p "$(dirname "$dir")" && cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
if [ -z "$pindir" ]; then
  confhome="${XDG_CONFIG_HOME:-${HOME:?set HOME or pass --pin-dir}/.config}"
  pindir="$confhome/hsmkeys/softhsm-pins/$(printf '%s' "$absdir" | sha256sum | cut -c1-16)"
fi
case "$(cd "$(dirname "$pindir")" 2>/dev/null && pwd)/$(basename "$pindir")/" in
  "$absdir"/*) echo "softhsm-setup: --pin-dir must not be inside $absdir" >&2; exit 2 ;;
esac

if [ "$reset" = 1 ]; then
  if [ -d "$dir" ]; then say "removing $dir"; rm -rf "$dir"; fi
  rm -f "$pindir/user.pin" "$pindir/so.pin"
fi
umask 077
mkdir -p "$dir/tokens" "$dir/bin" "$pindir"
dir=$(cd "$dir" && pwd)
pindir=$(cd "$pindir" && pwd)
chmod 700 "$dir" "$dir/tokens" "$pindir"

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
  # An earlier version kept the PINs in DIR: move them out, the token
  # there was made with them.
  if [ -s "$dir/$f" ] && [ ! -s "$pindir/$f" ]; then
    say "moving $f out of $dir to $pindir"
    mv "$dir/$f" "$pindir/$f"
  fi
  rm -f "$dir/$f"
  if [ ! -s "$pindir/$f" ]; then
    newpin > "$pindir/$f.tmp" && mv "$pindir/$f.tmp" "$pindir/$f"
  fi
  chmod 600 "$pindir/$f"
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
    --so-pin-file "$pindir/so.pin" --pin-file "$pindir/user.pin" >&2
fi

envfile="$dir/env"
cat > "$envfile.tmp" <<ENV
export SOFTHSM2_CONF='$conf'
export HSMKEYS_MODULE='$module'
export HSMKEYS_TOKEN='$label'
export HSMKEYS_PIN_FILE='$pindir/user.pin'
export HSMKEYS_SO_PIN_FILE='$pindir/so.pin'
ENV
if ! cmp -s "$envfile.tmp" "$envfile" 2>/dev/null; then
  mv "$envfile.tmp" "$envfile"
else
  rm -f "$envfile.tmp"
fi
say "environment written to $envfile (source it: . $envfile)"
[ "$quiet" = 1 ] || cat "$envfile"
