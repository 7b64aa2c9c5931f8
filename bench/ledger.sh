#!/usr/bin/env bash
# The audit ledger's figures against the last recorded ones.
#
#   bench/ledger.sh [LEAVES] [--database postgres://…] [--record]
#
# Runs `rempart bench ledger` (release build) on a fresh ledger of LEAVES
# leaves (default 1,000,000; SQLite unless --database), prints each figure
# beside the one recorded in bench/ledger-baseline-<backend>-<leaves>.txt
# and says which moved by more than 30%, in either direction. --record
# writes this run's figures as the new baseline (commit it with the change
# that moved them). Exits 1 when a figure got worse by more than 30%.
set -euo pipefail
cd "$(dirname "$0")/.."

LEAVES=1000000
DATABASE=""
RECORD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --database) DATABASE="$2"; shift 2 ;;
    --record) RECORD=1; shift ;;
    *) LEAVES="$1"; shift ;;
  esac
done
backend=sqlite
[ -n "$DATABASE" ] && backend=postgres
BASELINE="bench/ledger-baseline-$backend-$LEAVES.txt"

cargo build --release -q -p rempart-cli
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(bench ledger --leaves "$LEAVES")
if [ -n "$DATABASE" ]; then args+=(--database "$DATABASE"); else args+=(--dir "$work"); fi
out=$("${CARGO_TARGET_DIR:-target}/release/rempart" "${args[@]}")
echo "$out"

# name, value, and whether higher is better (1) or worse (0).
figures=$(echo "$out" | awk '
  /^batched appends/ { sub(/\/s$/, "", $NF); print "batched_appends_per_s", $NF, 1 }
  /^durable appends/ { sub(/\/s$/, "", $NF); print "durable_appends_per_s", $NF, 1 }
  /^latency at/ {
    for (i = 1; i <= NF; i++) {
      if ($i == "p50") print "append_p50_us", $(i + 1), 0
      if ($i == "p99") print "append_p99_us", $(i + 1), 0
    }
  }
  /^bytes on disk/ { for (i = 1; i <= NF; i++) if ($i == "bytes" && $(i + 1) == "per") print "bytes_per_leaf", $(i - 1), 0 }
  /^verify:/ { print "verify_leaves_per_s", $(NF - 1), 1 }
  /^proofs at size.*first pass/ { for (i = 1; i <= NF; i++) if ($i == "inclusion") { print "inclusion_proof_us", $(i + 2), 0; break } }
  /^queries over/ { for (i = 1; i <= NF; i++) if ($i == "week:") { print "account_week_query_us", $(i + 2), 0; break } }
')

if [ "$RECORD" = 1 ]; then
  echo "$figures" > "$BASELINE"
  echo "recorded as $BASELINE"
  exit 0
fi
if [ ! -f "$BASELINE" ]; then
  echo "no baseline $BASELINE: run again with --record to make one" >&2
  exit 0
fi

echo
printf '%-24s %14s %14s %8s\n' figure recorded now change
worse=0
while read -r name now better; do
  was=$(awk -v n="$name" '$1 == n { print $2 }' "$BASELINE")
  if [ -z "$was" ]; then
    printf '%-24s %14s %14s %8s\n' "$name" "-" "$now" "new"
    continue
  fi
  verdict=$(awk -v a="$was" -v b="$now" -v up="$better" 'BEGIN {
    if (a == 0) { print "0.0 same"; exit }
    c = (b - a) / a * 100
    moved = (c > 30 || c < -30)
    bad = (up == 1 && c < -30) || (up == 0 && c > 30)
    printf "%+.1f%% %s", c, (moved ? (bad ? "WORSE" : "better") : "")
  }')
  printf '%-24s %14s %14s %s\n' "$name" "$was" "$now" "$verdict"
  case "$verdict" in *WORSE*) worse=1 ;; esac
done <<< "$figures"
if [ "$worse" = 1 ]; then
  echo "some figures got worse by more than 30% against $BASELINE" >&2
  exit 1
fi
echo "no figure moved for the worse by more than 30%"
