#!/usr/bin/env bash
# Import benchmark: persons/s and peak memory on SQLite and PostgreSQL,
# stored bytes per person, key rotation time, and as a baseline a plain
# PostgreSQL COPY of the same CSV into an unencrypted table.
#
#   bench/import.sh [PERSONS] [WORKDIR]      (default 1000000, /tmp/rempart-bench)
#
# Needs PostgreSQL at $BENCH_PG (default postgres://postgres@127.0.0.1:5432/test)
# and psql. Prints figures; medians need several runs on a noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONS="${1:-1000000}"
WORK="${2:-/tmp/rempart-bench}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
DB=rempart_bench
PGB="${PG%/*}/$DB"
TODAY=2026-11-01

cargo build --release -q -p rempart-cli
BIN=target/release/rempart
mkdir -p "$WORK"
CSV="$WORK/csv-$PERSONS"
if [ ! -f "$CSV/persons.csv" ]; then
  "$BIN" generate --persons "$PERSONS" --seed 42 --today "$TODAY" --out "$CSV"
fi
ls -l "$CSV"

timed() { # timed LABEL CMD... : runs, prints output, records "seconds peak_kib" in $WORK/last.time
  /usr/bin/time -f '%e %M' -o "$WORK/last.time" "$@" > "$WORK/last.out" 2> "$WORK/last.err" || {
    cat "$WORK/last.out" "$WORK/last.err"; exit 1; }
  cat "$WORK/last.out"
}
# From "persons.csv  1000000 lines in  6.35s (…": seconds, and lines per second.
persons_secs() { awk '/^persons.csv/ { for (i=1;i<=NF;i++) if ($(i-1) == "in") { sub(/s$/,"",$i); print $i } }' "$WORK/last.out"; }
persons_rate() { awk -v s="$(persons_secs)" '/^persons.csv/ { printf "%.0f", $2 / s }' "$WORK/last.out"; }
peak_mib() { awk '{ printf "%.0f", $2/1024 }' "$WORK/last.time"; }
bytes_per_person() { awk '/bytes per person/ { gsub(/\(/,""); for (i=1;i<=NF;i++) if ($(i+1)=="bytes" && $(i+2)=="per") print $i }' "$WORK/last.out"; }

echo "== SQLite"
rm -rf "$WORK/sqlite"
"$BIN" init --data "$WORK/sqlite" > /dev/null
timed "$BIN" import --data "$WORK/sqlite" --today "$TODAY" --rejects "$WORK/rejects.csv" "$CSV"
SQ_RATE=$(persons_rate); SQ_SECS=$(persons_secs); SQ_RSS=$(peak_mib)
timed "$BIN" inventory --data "$WORK/sqlite"; SQ_BPP=$(bytes_per_person)
FIRST_FT=$(sed -n 2p "$CSV/persons.csv" | cut -d, -f1)
"$BIN" person shred --data "$WORK/sqlite" --ft-id "$FIRST_FT"
timed "$BIN" keys rotate --data "$WORK/sqlite"; ROT=$(awk '/rewrapped in/ { for (i=1;i<=NF;i++) if ($i=="in") { sub(/s$/,"",$(i+1)); print $(i+1) } }' "$WORK/last.out")
timed "$BIN" keys verify --data "$WORK/sqlite"; VERIFY="$(head -1 "$WORK/last.out")"

echo "== PostgreSQL"
psql "$PG" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -qc "CREATE DATABASE $DB"
rm -rf "$WORK/pg"
"$BIN" init --data "$WORK/pg" --database "$PGB" > /dev/null
timed "$BIN" import --data "$WORK/pg" --database "$PGB" --today "$TODAY" --rejects "$WORK/rejects.csv" "$CSV"
PG_RATE=$(persons_rate); PG_SECS=$(persons_secs); PG_RSS=$(peak_mib)
timed "$BIN" inventory --data "$WORK/pg" --database "$PGB"; PG_BPP=$(bytes_per_person)

echo "== Baseline: plain COPY of the same CSV into an unencrypted table"
psql "$PGB" -qc "CREATE TABLE plain (ft_id text primary key, nir text, nom text, prenom text,
  date_naissance date, email text, telephone text, adresse text, code_postal text, commune text,
  statut text, date_inscription date, date_fin date)"
START=$(date +%s.%N)
psql "$PGB" -qc "\\copy plain FROM '$CSV/persons.csv' WITH (FORMAT csv, HEADER true)"
END=$(date +%s.%N)
COPY_SECS=$(echo "$END - $START" | bc -l)
COPY_RATE=$(echo "$PERSONS / $COPY_SECS" | bc -l)
psql "$PG" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"

printf '\n%-44s %12s %10s %12s %10s\n' "import of $PERSONS persons" "persons/s" "seconds" "peak RSS" "bytes/pers"
printf '%-44s %12.0f %10.2f %9s MiB %10s\n' "Rempart, SQLite (encrypted, 3 blind indexes)" "$SQ_RATE" "$SQ_SECS" "$SQ_RSS" "$SQ_BPP"
printf '%-44s %12.0f %10.2f %9s MiB %10s\n' "Rempart, PostgreSQL (same)" "$PG_RATE" "$PG_SECS" "$PG_RSS" "$PG_BPP"
printf '%-44s %12.0f %10.2f\n' "baseline: COPY into plain table (PK only)" "$COPY_RATE" "$COPY_SECS"
printf '\nratio SQLite / COPY baseline:     %.2f\n' "$(echo "$SQ_RATE / $COPY_RATE" | bc -l)"
printf 'ratio PostgreSQL / COPY baseline: %.2f\n' "$(echo "$PG_RATE / $COPY_RATE" | bc -l)"
printf 'key rotation (SQLite, %s persons, one shredded): %ss; after it: %s\n' "$PERSONS" "$ROT" "$VERIFY"
