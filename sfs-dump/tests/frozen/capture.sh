#!/usr/bin/env bash
# How the expected outputs in this directory were captured: with the sfs-dump
# of release 0.1 (before it became its own package), run from the workspace
# root on the frozen files of tests/frozen/v1. Usage, from the workspace root:
#
#   bash sfs-dump/tests/frozen/capture.sh path/to/sfs-dump
#
# It writes `cases` (one line per case: name, exit status, arguments) and, per
# case, NAME.out (stdout) and NAME.err (stderr, only when not empty).
# `sfs-dump/tests/frozen.rs` runs every case again and compares byte for byte.
# Rerun it only when a change of the output is intended, and say so in the
# commit.
set -euo pipefail
tool=${1:?the sfs-dump binary to capture from}
here=sfs-dump/tests/frozen
now=1800000000000
export COLUMNS=80
unset NO_COLOR
: > "$here/cases"
case_() {
    local name=$1; shift
    local status=0
    "$tool" "$@" --now "$now" > "$here/$name.out" 2> "$here/$name.err" || status=$?
    [ -s "$here/$name.err" ] || rm "$here/$name.err"
    echo "$name $status $* --now $now" >> "$here/cases"
}
for f in empty live damaged torn; do
    file=tests/frozen/v1/$f.sfs
    case_ "$f.summary.txt" "$file"
    case_ "$f.summary.json" "$file" --json
    case_ "$f.entries.txt" "$file" --entries
    case_ "$f.entries.json" "$file" --entries --json
    case_ "$f.map.txt" "$file" --map
    case_ "$f.map.json" "$file" --map --json
    case_ "$f.check.txt" "$file" --check
    case_ "$f.check.json" "$file" --check --json
done
case_ live.all.json tests/frozen/v1/live.sfs --entries --map --check --json
case_ live.key.txt tests/frozen/v1/live.sfs --key user:42
case_ live.key-hex.txt tests/frozen/v1/live.sfs --hex-key 00ff --hex
case_ live.key-json.json tests/frozen/v1/live.sfs --key beta --json
case_ live.key-expired.txt tests/frozen/v1/live.sfs --key lease
case_ damaged.key-corrupt.txt tests/frozen/v1/damaged.sfs --key gamma
case_ torn.key-torn.json tests/frozen/v1/torn.sfs --key zeta --json
