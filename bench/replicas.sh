#!/usr/bin/env bash
# Replicas benchmark: consultations/s and p50/p99 through a real HAProxy in
# front of 1, 2 and 3 `rempart serve` processes on one PostgreSQL, beside
# one replica with its clients connected directly, and beside pgbench with
# row-level security on the same PostgreSQL (bench/consult.sh's baseline,
# run by this script), with the integration lag (a leaf's time to the
# first signed checkpoint covering it) p50/p99. Every run also checks that
# each answer's leaf is in the ledger once and that the ledger verifies
# (`rempart bench replicas` fails otherwise). Runs alternate between the
# configurations; figures are medians over the runs.
#
#   bench/replicas.sh [PERSONS] [WORKDIR]     (default 200000, /tmp/rempart-bench)
#
# Environment: BENCH_PG (default postgres://postgres@127.0.0.1:5432/test, a
# superuser; the replicas get a database of their own, rempart_replicas_bench,
# dropped and recreated), BENCH_DURATION (seconds per run, 30),
# BENCH_CONNECTIONS (32), BENCH_RUNS (3), BENCH_SKIP_BASELINE=1 (no
# pgbench run: no ratio). Needs haproxy (Debian's package) and, for the
# baseline, what bench/consult.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONS="${1:-200000}"
WORK="${2:-/tmp/rempart-bench}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
DURATION="${BENCH_DURATION:-30}"
CONNS="${BENCH_CONNECTIONS:-32}"
RUNS="${BENCH_RUNS:-3}"
TODAY="$(date +%F)"
DB=rempart_replicas_bench

. bench/lib.sh
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1;
  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

command -v psql > /dev/null || die "psql is missing: apt-get install postgresql-client"
[ -x /usr/sbin/haproxy ] || die "haproxy is missing: apt-get install haproxy"
mkdir -p "$WORK"

cargo build --release -q -p rempart-cli
BIN="${CARGO_TARGET_DIR:-target}/release/rempart"
CSV=$(population_csv "$BIN" "$PERSONS" "$TODAY" "$WORK")
DATA="$WORK/replicas-data"
URL=$(imported_postgres "$BIN" "$PG" "$DB" "$DATA" "$CSV" "$TODAY" "$WORK/replicas-rejects.csv")

: > "$WORK/replicas-results"
run() { # run LABEL ARGS...: one `bench replicas`, its RESULT line appended under LABEL
  local label=$1
  shift
  echo "== $label: $CONNS clients, ${DURATION}s"
  "$BIN" bench replicas --data "$DATA" --database "$URL" --seconds "$DURATION" \
    --connections "$CONNS" "$@" | tee "$WORK/replicas-run.out"
  local line
  line=$(grep '^RESULT ' "$WORK/replicas-run.out" | tail -n 1)
  [ -n "$line" ] || die "rempart bench replicas printed no RESULT line"
  echo "$label ${line#RESULT }" >> "$WORK/replicas-results"
}
CONFIGS=("direct-1" "balanced-1" "balanced-2" "balanced-3")
for i in $(seq 1 "$RUNS"); do
  echo "#### run $i/$RUNS"
  run direct-1 --replicas 1 --direct
  run balanced-1 --replicas 1
  run balanced-2 --replicas 2
  run balanced-3 --replicas 3
done
field() { # field LABEL NAME: its value in each run of LABEL
  awk -v l="$1" '$1 == l' "$WORK/replicas-results" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

PG_TPS=""
if [ "${BENCH_SKIP_BASELINE:-0}" != 1 ]; then
  # The baseline, on the same machine and PostgreSQL, right after.
  BENCH_DURATION="$DURATION" BENCH_CONNECTIONS="$CONNS" BENCH_RUNS="$RUNS" \
    bench/consult.sh "$PERSONS" "$WORK" | tee "$WORK/consult-for-replicas.out"
  PG_TPS=$(sed -nE 's/^baseline: pgbench, PostgreSQL RLS, plaintext +([0-9.]+).*/\1/p' \
    "$WORK/consult-for-replicas.out" | tail -n 1)
fi

printf '\nreplicas on one PostgreSQL, %s persons, %s clients (keep-alive), %ss per run, medians of %s runs\n' \
  "$PERSONS" "$CONNS" "$DURATION" "$RUNS"
printf '%-34s %10s %9s %9s %10s %10s %8s\n' "" "reads/s" "p50 ms" "p99 ms" "lag p50" "lag p99" "ratio"
for c in "${CONFIGS[@]}"; do
  RPS=$(field "$c" consult_rps | median)
  printf '%-34s %10.0f %9.3f %9.3f %8.0fms %8.0fms %8s\n' "$c" "$RPS" \
    "$(field "$c" p50_ms | median)" "$(field "$c" p99_ms | median)" \
    "$(field "$c" checkpoint_lag_p50_ms | median)" "$(field "$c" checkpoint_lag_p99_ms | median)" \
    "$(if [ -n "$PG_TPS" ]; then ratio "$RPS" "$PG_TPS"; else echo -; fi)"
done
if [ -n "$PG_TPS" ]; then
  printf '%-34s %10.0f   (ratio = reads/s over this; target for direct-1 >= 1.0)\n' \
    "baseline: pgbench, PostgreSQL RLS" "$PG_TPS"
fi
psql "$PG" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
