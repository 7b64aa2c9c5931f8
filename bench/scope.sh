#!/usr/bin/env bash
# Breach scoping at scale, on SQLite and on PostgreSQL.
#
#   bench/scope.sh [LEAVES] [--database postgres://…] [--sqlite-only]
#
# Builds `rempart-cli` in release mode, then runs `rempart bench scope` on a
# fresh synthetic ledger of LEAVES leaves (default 50,000,000; 43 M
# persons; 3 % of the leaves by one account, which reveal about 1.3 M
# persons) on SQLite in a temporary directory, then on PostgreSQL (schema
# ledger_bench_scope, dropped at the end). Each prints the scope of the
# compromised account and of its organisation (median of 3), and the
# query index's distinct persons for the account as the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."

LEAVES=50000000
DATABASE="postgres://postgres@127.0.0.1:5432/test"
SQLITE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --database) DATABASE="$2"; shift 2 ;;
    --sqlite-only) SQLITE_ONLY=1; shift ;;
    *) LEAVES="$1"; shift ;;
  esac
done

cargo build --release -q -p rempart-cli
bin="${CARGO_TARGET_DIR:-target}/release/rempart"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" bench scope --leaves "$LEAVES" --dir "$work"
rm -rf "$work"/*
if [ "$SQLITE_ONLY" = 0 ]; then
  "$bin" bench scope --leaves "$LEAVES" --database "$DATABASE"
fi
