#!/usr/bin/env bash
# demo.sh: the main job, end to end, on a fresh machine: make a SoftHSM token
# (scripts/softhsm-setup.sh), then run the administrator's round trip with
# hsmkeys: check the token, create KEKs, export a session key, inspect and
# verify it, rotate the KEK and rewrap, encrypt and decrypt a file, and
# show that the token holds no session key afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/softhsm-setup.sh --quiet
. .softhsm/env
go build -o .softhsm/bin/hsmkeys ./cmd/hsmkeys
hsmkeys() { .softhsm/bin/hsmkeys "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "hsmkeys tokens"
hsmkeys tokens
step "hsmkeys doctor (can this token keep our promises?)"
hsmkeys doctor
step "hsmkeys kek create --label demo (the safe default here: an RSA-3072 KEK whose unwrapping half is a private object, encrypted at rest; SO PIN from HSMKEYS_SO_PIN_FILE)"
hsmkeys kek create --label demo
step "hsmkeys key new --kek demo -o session.key (a session key, born in the token, exported wrapped)"
hsmkeys key new --kek demo -o "$work/session.key" --pem
head -c 120 "$work/session.key"; echo ...
step "hsmkeys key inspect --verify session.key"
hsmkeys key inspect --verify "$work/session.key"
step "hsmkeys kek create --label demo (a new version), then key rewrap"
hsmkeys kek create --label demo
hsmkeys key rewrap --kek demo "$work/session.key"
hsmkeys key inspect --verify "$work/session.key"
step "hsmkeys kek list (RESTRICTED: each half takes OAEP only; AT-REST: protected)"
hsmkeys kek list
step "hsmkeys encrypt / decrypt a file, with an encryption context"
head -c 3000000 /dev/urandom > "$work/report.bin"
hsmkeys encrypt --kek demo --context purpose=demo -i "$work/report.bin" -o "$work/report.cms"
hsmkeys key inspect "$work/report.cms"
hsmkeys decrypt --context purpose=demo -i "$work/report.cms" -o "$work/report.out"
cmp "$work/report.bin" "$work/report.out" && echo "decrypted file matches the original"
printf 'x' | dd of="$work/report.cms" bs=1 seek=2000 conv=notrunc status=none
if hsmkeys decrypt --context purpose=demo -i "$work/report.cms" -o "$work/tampered.out"; then
  echo "demo: a tampered message decrypted" >&2; exit 1
fi
[ ! -e "$work/tampered.out" ] && echo "a tampered message is refused and leaves no output"
step "hsmkeys selftest (generate, seal, open, tamper, destroy; the token holds no session key after)"
hsmkeys selftest
step "done: the demo KEKs stay on the token in .softhsm/ (scripts/softhsm-setup.sh --reset starts over)"
