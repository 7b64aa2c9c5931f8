#!/usr/bin/env bash
# Breach notices at scale (GDPR Art. 34): one notice per affected person
# rendered and queued, then the dispatcher's delivery rate, on SQLite and
# on PostgreSQL.
#
#   bench/notices.sh [PERSONS] [--sqlite-only] [--server postgres://…/postgres]
#
# Builds `rempart-cli` in release mode, starts the SMTP sink the tests use
# (aiosmtpd, installed in tools/smtp-sink/.venv if missing), then runs
# `rempart bench notices` on a registry of PERSONS persons (default
# 1,000,000), every one of them affected: SQLite in a temporary directory,
# then PostgreSQL in a database created for the run and dropped after.
# Each prints the rendered-and-queued time against the vault reads and
# the rendering alone, and the e-mail and letter delivery rates.
set -euo pipefail
cd "$(dirname "$0")/.."

PERSONS=1000000
SERVER="postgres://postgres@127.0.0.1:5432/postgres"
SQLITE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER="$2"; shift 2 ;;
    --sqlite-only) SQLITE_ONLY=1; shift ;;
    *) PERSONS="$1"; shift ;;
  esac
done

cargo build --release -q -p rempart-cli
bin="${CARGO_TARGET_DIR:-target}/release/rempart"
. bench/lib.sh
work=$(mktemp -d)
start_smtp_sink "$work/maildir"
port=$SINK_PORT
trap 'kill $SINK_PID 2>/dev/null; rm -rf "$work"' EXIT

"$bin" bench notices --persons "$PERSONS" --dir "$work/sqlite" --smtp "127.0.0.1:$port"
# The sink keeps its Maildir open: empty it, do not remove it.
rm -rf "$work/sqlite"
find "$work/maildir" -type f -delete
if [ "$SQLITE_ONLY" = 0 ]; then
  db=rempart_bench_notices
  psql "$SERVER" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  url="${SERVER%/*}/$db"
  "$bin" bench notices --persons "$PERSONS" --dir "$work/pg" --database "$url" --smtp "127.0.0.1:$port"
  psql "$SERVER" -qc "DROP DATABASE $db"
fi
