#!/usr/bin/env bash
# National scale on one machine: the registry at 43 million persons and
# their mandates, and the audit ledger at hundreds of millions of leaves.
#
#   bench/national.sh [--postgres] [--persons N] [--small N] [--leaves N]
#                     [--skip-import] [--work DIR]
#
# Defaults: SQLite, 43,000,000 persons (about 22 M mandates), a small
# registry of 200,000 persons to compare consultations with, 50,000,000
# ledger leaves, /tmp/rempart-national. It prints:
# - for each CSV file: lines, seconds, lines/s and the import's peak RSS
#   (one `rempart import` per file, so each has its own peak);
# - stored bytes per person and the data directory's size;
# - consultations/s and p99 at N persons and at the small size, same run of
#   the script, and their ratio (target >= 0.8, p99 <= 10 ms);
# - the ledger at --leaves (`rempart bench ledger`): bytes per leaf,
#   verification leaves/s, proofs, the account and person queries; when
#   --leaves is below 500 M, the extrapolation to 500 M and how it is made.
#
# What fits here: the 43 M CSV files take about 8.5 GB, the SQLite registry
# about 21 GB, the PostgreSQL one about 28 GB (run one backend at a time:
# each run deletes the other's data first). The ledger's synthetic leaves
# read the same number of persons as the registry holds; 500 M leaves take
# about 62 GB on SQLite (123 bytes a leaf), more than fits beside the
# registry, which is why --leaves defaults lower: for the full size, run
# `rempart bench ledger --leaves 500000000 --persons 43000000 --dir DIR`
# on its own.
#
# Needs /usr/bin/time; --postgres needs PostgreSQL at $BENCH_PG (default
# postgres://postgres@127.0.0.1:5432/test) and psql. Seconds per
# consultation round: BENCH_DURATION (10), rounds: BENCH_RUNS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

BACKEND=sqlite
PERSONS=43000000
SMALL=200000
LEAVES=50000000
WORK=/tmp/rempart-national
SKIP_IMPORT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --postgres) BACKEND=postgres ;;
    --persons) PERSONS="$2"; shift ;;
    --small) SMALL="$2"; shift ;;
    --leaves) LEAVES="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --skip-import) SKIP_IMPORT=1 ;;
    *) die "unknown argument $1 (see the head of $0)" ;;
  esac
  shift
done
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
DURATION="${BENCH_DURATION:-10}"
RUNS="${BENCH_RUNS:-3}"
TODAY=2026-11-01
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time"

cargo build --release -q -p rempart-cli
BIN=target/release/rempart
mkdir -p "$WORK"
SUMMARY="$WORK/summary-$BACKEND.txt"
: > "$SUMMARY"
# Figures go to the terminal (stderr) and the summary; stdout carries the
# functions' results.
say() { echo "$*" | tee -a "$SUMMARY" >&2; }

# One backend's registry at a time: the other's goes first.
if [ "$BACKEND" = postgres ]; then rm -rf "$WORK/sqlite-$PERSONS"; else
  psql "$PG" -qc "DROP DATABASE IF EXISTS rempart_national WITH (FORCE)" > /dev/null 2>&1 || true; fi
free_gb=$(df -BG --output=avail "$WORK" | tail -1 | tr -dc 0-9)
# About 650 bytes a person stored (PostgreSQL; SQLite 590), and 200 of CSV
# unless it is there already.
csv_bytes=200
[ -f "$WORK/csv-$PERSONS-$TODAY/persons.csv" ] && csv_bytes=0
need_gb=$(( PERSONS * (csv_bytes + 650) / 1000000000 + 1 ))
say "== national scale, $BACKEND: $PERSONS persons ($SMALL for comparison), $LEAVES ledger leaves"
say "disk: ${free_gb} GB free in $WORK, about ${need_gb} GB needed for the registry and its CSV"
[ "$free_gb" -ge "$need_gb" ] || die "not enough disk: scale down with --persons"

# registry DIR [DB]: the flags that name a registry.
registry() { if [ -n "${2:-}" ]; then echo "--data $1 --database $2"; else echo "--data $1"; fi; }

# fresh DIR DB: an empty data directory (and database) for the backend.
fresh() {
  rm -rf "$1"
  if [ "$BACKEND" = postgres ]; then
    command -v psql > /dev/null || die "psql is missing: apt-get install postgresql-client"
    psql "$PG" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $2 WITH (FORCE)" \
      -c "CREATE DATABASE $2" > /dev/null
    "$BIN" init $(registry "$1" "${PG%/*}/$2") > /dev/null
  else
    "$BIN" init --data "$1" > /dev/null
  fi
}

# import_one LABEL DIR URL FILE...: one import, its summary and peak RSS.
import_one() {
  local label="$1" dir="$2" url="$3"; shift 3
  /usr/bin/time -f '%e %M' -o "$WORK/import.time" \
    "$BIN" import $(registry "$dir" "$url") --today "$TODAY" --rejects "$WORK/rejects.csv" "$@" \
    > "$WORK/import.out" 2> "$WORK/import.err" || { cat "$WORK/import.out" "$WORK/import.err"; die "import of $label failed"; }
  grep -E '^[a-z]+\.csv|pipeline' "$WORK/import.out" | sed 's/^/  /' | tee -a "$SUMMARY" >&2
  read -r secs kib < "$WORK/import.time"
  say "  $label: ${secs}s wall, peak RSS $(( kib / 1024 )) MiB"
  echo "$secs $(( kib / 1024 ))"
}

# import_all DIR URL CSV: organisations and accounts, persons, mandates.
import_all() {
  local t total=0 peak=0 secs mib
  for part in "organisations accounts" persons mandates; do
    local files=()
    for f in $part; do files+=("$3/$f.csv"); done
    read -r secs mib < <(import_one "${part// /+}" "$1" "$2" "${files[@]}" | tail -1)
    total=$(echo "$total + $secs" | bc -l)
    [ "$mib" -gt "$peak" ] && peak=$mib
  done
  say "  whole import: ${total}s, peak RSS ${peak} MiB"
  echo "$total $peak"
}

# consult DIR URL: the median RESULT line of `rempart bench consult`.
consult() {
  "$BIN" bench consult $(registry "$1" "$2") --duration "$DURATION" --rounds "$RUNS" \
    > "$WORK/consult.out" 2>&1 || { cat "$WORK/consult.out"; die "bench consult failed"; }
  grep '^RESULT ' "$WORK/consult.out" | tail -1
}
value() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

BIG="$WORK/$BACKEND-$PERSONS"
BIG_URL=""
[ "$BACKEND" = postgres ] && BIG_URL="${PG%/*}/rempart_national"
CSV=$(population_csv "$BIN" "$PERSONS" "$TODAY" "$WORK")
say "CSV: $(du -sb "$CSV" | cut -f1) bytes in $CSV"
if [ "$SKIP_IMPORT" = 0 ] || [ ! -d "$BIG" ]; then
  say "== import of $PERSONS persons"
  fresh "$BIG" rempart_national
  read -r BIG_SECS BIG_RSS < <(import_all "$BIG" "$BIG_URL" "$CSV" | tail -1)
fi
"$BIN" inventory $(registry "$BIG" "$BIG_URL") | grep -E 'persons|mandates|bytes' | sed 's/^/  /' | tee -a "$SUMMARY" >&2
say "  data directory: $(du -sh "$BIG" | cut -f1)"

say "== import of $SMALL persons (for the comparison)"
SMALL_DIR="$WORK/$BACKEND-$SMALL"
SMALL_URL=""
[ "$BACKEND" = postgres ] && SMALL_URL="${PG%/*}/rempart_national_small"
SMALL_CSV=$(population_csv "$BIN" "$SMALL" "$TODAY" "$WORK")
fresh "$SMALL_DIR" rempart_national_small
import_all "$SMALL_DIR" "$SMALL_URL" "$SMALL_CSV" > /dev/null

say "== consultations ($RUNS rounds of ${DURATION}s, medians), alternating sizes"
R_SMALL=$(consult "$SMALL_DIR" "$SMALL_URL")
R_BIG=$(consult "$BIG" "$BIG_URL")
S_RPS=$(value "$R_SMALL" consult_rps); S_P99=$(value "$R_SMALL" consult_p99_ms)
B_RPS=$(value "$R_BIG" consult_rps); B_P99=$(value "$R_BIG" consult_p99_ms)
say "  $SMALL persons: $S_RPS consultations/s, p99 $S_P99 ms"
say "  $PERSONS persons: $B_RPS consultations/s, p99 $B_P99 ms"
say "  ratio: $(printf '%.2f' "$(echo "$B_RPS / $S_RPS" | bc -l)") (target >= 0.80, p99 <= 10 ms)"
[ "$BACKEND" = postgres ] && psql "$PG" -qc "DROP DATABASE IF EXISTS rempart_national_small WITH (FORCE)" > /dev/null

say "== ledger at $LEAVES leaves ($BACKEND)"
LEDGER_ARGS=(--leaves "$LEAVES" --persons "$PERSONS")
if [ "$BACKEND" = postgres ]; then LEDGER_ARGS+=(--database "$PG"); else
  mkdir -p "$WORK/ledger"; rm -rf "$WORK/ledger"/*; LEDGER_ARGS+=(--dir "$WORK/ledger"); fi
"$BIN" bench ledger "${LEDGER_ARGS[@]}" > "$WORK/ledger.out" 2>&1 || { cat "$WORK/ledger.out"; die "bench ledger failed"; }
grep -E 'bytes on disk|verify:|proofs at|queries over' "$WORK/ledger.out" | sed 's/^/  /' | tee -a "$SUMMARY" >&2
rm -rf "$WORK/ledger"
BPL=$(sed -n 's/.* = \([0-9]*\) bytes per leaf.*/\1/p' "$WORK/ledger.out")
VPS=$(sed -n 's/^verify: .* = \([0-9]*\) leaves\/s.*/\1/p' "$WORK/ledger.out")
if [ -n "$BPL" ] && [ -n "$VPS" ] && [ "$LEAVES" -lt 500000000 ]; then
  say "  extrapolation to 500,000,000 leaves (bytes and verification grow linearly with"
  say "  the leaves; proofs with log2 n, 29 levels instead of $(echo "l($LEAVES)/l(2)" | bc -l | cut -d. -f1)+1):"
  say "    disk $(( BPL * 500 )) MB at $BPL bytes per leaf; audit verify $(( 500000000 / VPS )) s at $VPS leaves/s"
fi
say "summary written to $SUMMARY"
