#!/usr/bin/env bash
# Soak: consultations under sustained load for SOAK_SECS (600), with p50,
# p99 and the slowest request of every minute, on the embedded default
# (SQLite, one server, clients on it directly) and through HAProxy in front
# of three replicas on PostgreSQL. A minute whose p99 stands far above the
# others is a finding (a checkpoint, a vacuum, a sync): the per-minute
# lines say when. Every run also checks a sample of the answers' leaves in
# the ledger and verifies the whole ledger (`rempart bench replicas`).
#
#   bench/soak.sh [PERSONS] [WORKDIR]     (default 200000, /tmp/rempart-bench)
#
# Environment: BENCH_PG (default postgres://postgres@127.0.0.1:5432/test, a
# superuser; the replicas get a database of their own, rempart_soak_bench,
# dropped and recreated), SOAK_SECS (600), SOAK_REPORT_SECS (60),
# BENCH_CONNECTIONS (32), SOAK_ONLY (sqlite or balanced: one of the two).
# Needs haproxy (Debian's package) for the balanced run.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONS="${1:-200000}"
WORK="${2:-/tmp/rempart-bench}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
SECS="${SOAK_SECS:-600}"
EVERY="${SOAK_REPORT_SECS:-60}"
CONNS="${BENCH_CONNECTIONS:-32}"
ONLY="${SOAK_ONLY:-}"
TODAY="$(date +%F)"
DB=rempart_soak_bench

. bench/lib.sh
mkdir -p "$WORK"
cargo build --release -q -p rempart-cli
BIN="${CARGO_TARGET_DIR:-target}/release/rempart"
CSV=$(population_csv "$BIN" "$PERSONS" "$TODAY" "$WORK")

soak() { # soak LABEL ARGS...: one long `bench replicas`, its lines under LABEL
  local label=$1
  shift
  echo "== $label: $CONNS clients, ${SECS}s, every ${EVERY}s"
  "$BIN" bench replicas --seconds "$SECS" --connections "$CONNS" --report-secs "$EVERY" \
    --check-answers 20000 "$@" > "$WORK/soak-$label.out"
  grep -E '^(INTERVAL|RESULT) ' "$WORK/soak-$label.out" | sed "s/^/$label /"
}

if [ "$ONLY" != balanced ]; then
  DATA="$WORK/soak-sqlite"
  rm -rf "$DATA"
  "$BIN" init --data "$DATA" > /dev/null
  "$BIN" import --data "$DATA" --today "$TODAY" --rejects "$WORK/soak-rejects.csv" "$CSV" > /dev/null
  soak sqlite --data "$DATA" --replicas 1 --direct
fi
if [ "$ONLY" != sqlite ]; then
  [ -x /usr/sbin/haproxy ] || die "haproxy is missing: apt-get install haproxy"
  DATA="$WORK/soak-pg"
  URL=$(imported_postgres "$BIN" "$PG" "$DB" "$DATA" "$CSV" "$TODAY" "$WORK/soak-rejects.csv")
  soak balanced-3 --data "$DATA" --database "$URL" --replicas 3
fi
