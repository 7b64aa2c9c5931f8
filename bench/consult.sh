#!/usr/bin/env bash
# Consultation benchmark: consultations/s over HTTP with keep-alive, p50 and
# p99 latency (`rempart bench consult`: one agent, random persons of its
# caseload, policy, decryption, durable audit append), and as a baseline
# PostgreSQL with row-level security answering the same lookups in
# plaintext through pgbench, as a non-superuser role, same clients, same
# duration. Target: Rempart >= 1.0x the pgbench-RLS rate.
#
#   bench/consult.sh [PERSONS] [WORKDIR]     (default 200000, /tmp/rempart-bench)
#
# Environment: BENCH_PG (default postgres://postgres@127.0.0.1:5432/test, a
# superuser: the baseline lives in its schema bench_rls, dropped and
# recreated, read through the role bench_rls_reader), BENCH_DURATION
# (seconds per run, 30), BENCH_CONNECTIONS (32), BENCH_THREADS (pgbench -j,
# 2), BENCH_RUNS (3; figures are medians over the runs), BENCH_TODAY (date
# the population is generated as of, today by default: the policy uses
# current_date), BENCH_KEEP=1 keeps the schema and role afterwards.
#
# Under wrk, the script also measures `rempart bench floor`: the server's
# no-op beside a route that only appends a leaf to a throwaway audit
# ledger, durably (what every consultation must do before it answers), and
# prints the CPU each kind of request costs: the server's threads by name,
# wrk itself, and the whole machine.
#
# Needs psql and pgbench. On Debian 12 pgbench ships in the server package
# postgresql-15 (pulled in by postgresql-contrib), not in postgresql-client-15;
# as root the script fetches that package and unpacks pgbench alone into
# WORKDIR, without installing or starting a server.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=bench/rls
PERSONS="${1:-200000}"
WORK="${2:-/tmp/rempart-bench}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
DURATION="${BENCH_DURATION:-30}"
CONNS="${BENCH_CONNECTIONS:-32}"
THREADS="${BENCH_THREADS:-2}"
RUNS="${BENCH_RUNS:-3}"
TODAY="${BENCH_TODAY:-$(date +%F)}"
ROLE=bench_rls_reader

die() { echo "FATAL: $*" >&2; exit 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1;
  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# --- tools -----------------------------------------------------------------
command -v psql > /dev/null || die "psql is missing: apt-get install postgresql-client"
mkdir -p "$WORK"
PGBENCH=pgbench
if ! pgbench --version > /dev/null 2>&1; then
  # /usr/bin/pgbench may exist as a wrapper without any pgbench behind it.
  PGMAJOR=$(psql --version | awk '{ print $3 }' | cut -d. -f1)
  LOCAL="$WORK/pgbench-pkg/usr/lib/postgresql/$PGMAJOR/bin/pgbench"
  if [ ! -x "$LOCAL" ] && [ "$(id -u)" = 0 ]; then
    echo "pgbench missing: unpacking it from postgresql-$PGMAJOR (no server installed)"
    rm -rf "$WORK/pgbench-pkg" "$WORK/pgbench-deb" && mkdir -p "$WORK/pgbench-deb"
    apt-get update -qq
    (cd "$WORK/pgbench-deb" && apt-get download -qq "postgresql-$PGMAJOR")
    dpkg-deb -x "$WORK"/pgbench-deb/postgresql-"$PGMAJOR"_*.deb "$WORK/pgbench-pkg"
  fi
  "$LOCAL" --version > /dev/null 2>&1 ||
    die "pgbench is missing. On Debian 12 it comes with the server package: apt-get install postgresql-$PGMAJOR (or postgresql-contrib)"
  PGBENCH="$LOCAL"
fi
psql "$PG" -qAtc 'select 1' > /dev/null || die "cannot connect to $PG"
[ "$(psql "$PG" -qAtc "select rolsuper from pg_roles where rolname = current_user")" = t ] ||
  die "$PG must connect as a superuser (it creates the role $ROLE)"

# --- Rempart: build, generate, import --------------------------------------
cargo build --release -q -p rempart-cli
BIN="${CARGO_TARGET_DIR:-target}/release/rempart"
CSV="$WORK/csv-$PERSONS-$TODAY"
if [ ! -f "$CSV/persons.csv" ]; then
  "$BIN" generate --persons "$PERSONS" --seed 42 --today "$TODAY" --out "$CSV"
fi
ls -l "$CSV"
DATA="$WORK/consult-sqlite"
rm -rf "$DATA"
"$BIN" init --data "$DATA" > /dev/null
"$BIN" import --data "$DATA" --today "$TODAY" --rejects "$WORK/consult-rejects.csv" "$CSV"

HAVE_CONSULT=1
if ! "$BIN" bench consult --help > /dev/null 2>&1; then
  HAVE_CONSULT=0
  echo "rempart bench consult not available: measuring the baseline only"
fi
: > "$WORK/consult-results"
rempart_run() { # one run; appends its RESULT line to consult-results
  echo "== Rempart, run $1/$RUNS: $CONNS connections, ${DURATION}s"
  "$BIN" bench consult --data "$DATA" --duration "$DURATION" --connections "$CONNS" --rounds 1 |
    tee "$WORK/consult-run.out"
  local line
  line=$(tail -n 1 "$WORK/consult-run.out")
  case "$line" in RESULT\ *) ;; *) die "rempart bench consult did not end with a RESULT line" ;; esac
  echo "$line" >> "$WORK/consult-results"
}
field() { # field NAME: its value in each RESULT line, one line per run
  sed -E 's/^RESULT //' "$WORK/consult-results" | tr ' ' '\n' | sed -n "s/^$1=//p"
}
ORG=""
ACCOUNT=""
if [ "$HAVE_CONSULT" = 1 ]; then
  rempart_run 1
  ORG=$(field organisation | head -n 1)
  ACCOUNT=$(field account | head -n 1)
fi

# --- Rempart measured by wrk: a C load generator, like pgbench ------------
# `rempart bench consult` drives the server from a Rust client in the same
# process; wrk is lighter and runs as its own process, as pgbench does.
HAVE_WRK=0
command -v wrk > /dev/null 2>&1 && HAVE_WRK=1
if [ "$HAVE_WRK" = 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
  apt-get install -y -qq wrk > /dev/null 2>&1 && HAVE_WRK=1
fi
[ "$HAVE_WRK" = 1 ] || echo "wrk not installed (apt-get install wrk): no wrk figures"
: > "$WORK/wrk-results"
: > "$WORK/cpu-results"
: > "$WORK/floor-results"
SERVER_PID=""
stop_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2> /dev/null || true; wait "$SERVER_PID" 2> /dev/null || true; SERVER_PID=""; fi; }
trap stop_server EXIT
start_server() { # `rempart serve` on $PORT (one server owns the ledger at a time)
  # The guard runs, with thresholds out of a load test's reach (one agent
  # reads its caseload thousands of times a second).
  "$BIN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --guard-config bench/guard-load-test.toml \
    >> "$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/api/v1/health/ready" > /dev/null 2>&1 && return; sleep 0.2; done
  die "rempart serve did not become ready (see $WORK/serve.log)"
}
wrk_ms() { # a wrk latency (850.00us, 1.20ms, 2.00s) in ms
  awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.3f\n", v }'
}
# Where the CPU goes, per request: the server's threads by name (the
# runtime's workers, the ledger's writer and WAL checkpointer, ...) from
# /proc, wrk's own time, and the whole machine's busy and idle time. The
# no-op target is a budget: at 0.5x, a consultation may use twice the CPU
# of a no-op request, load generator included.
HZ=$(getconf CLK_TCK)
server_threads() { # "name ticks" per thread name of the server
  for t in /proc/"$SERVER_PID"/task/*/stat; do
    sed -E 's/^[0-9]+ \((.*)\) [A-Z] (.*)$/\1\t\2/' "$t" 2> /dev/null | tr ' ' '_' |
      awk -F '\t' '{ split($2, f, "_"); print $1, f[11] + f[12] }'
  done | awk '{ t[$1] += $2 } END { for (k in t) print k, t[k] }' | sort
}
machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
wrk_measure() { # wrk_measure LABEL URL [SCRIPT]: prints "rps p50_ms p99_ms"; appends to cpu-results
  local label=$1 out b0 i0 b1 i1 rps n
  shift
  server_threads > "$WORK/threads.0"
  read -r b0 i0 < <(machine)
  local TIMEFORMAT='%U %S'
  if [ -n "${2:-}" ]; then
    { time wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$2" "$1" > "$WORK/wrk.out"; } 2> "$WORK/wrk.time"
  else
    { time wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1" > "$WORK/wrk.out"; } 2> "$WORK/wrk.time"
  fi
  read -r b1 i1 < <(machine)
  server_threads > "$WORK/threads.1"
  out=$(cat "$WORK/wrk.out")
  echo "$out" | grep -q "Non-2xx" && { echo "$out" >&2; die "wrk got non-2xx answers"; }
  rps=$(echo "$out" | sed -nE 's/^Requests\/sec: *([0-9.]+)/\1/p')
  n=$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { print r * d }')
  { join "$WORK/threads.0" "$WORK/threads.1" |
      awk -v l="$label" -v n="$n" -v hz="$HZ" '$3 > $2 { printf "%s server:%s %.2f\n", l, $1, ($3 - $2) * 1e6 / hz / n }'
    awk -v l="$label" -v n="$n" '{ printf "%s wrk %.2f\n", l, ($1 + $2) * 1e6 / n }' "$WORK/wrk.time"
    awk -v l="$label" -v n="$n" -v hz="$HZ" -v b=$((b1 - b0)) -v i=$((i1 - i0)) \
      'BEGIN { printf "%s machine-busy %.2f\n%s machine-idle-%% %.1f\n", l, b * 1e6 / hz / n, l, 100 * i / (b + i) }'
  } >> "$WORK/cpu-results"
  printf '%s %s %s\n' "$rps" \
    "$(echo "$out" | awk '$1 == "50%" { print $2 }' | wrk_ms)" \
    "$(echo "$out" | awk '$1 == "99%" { print $2 }' | wrk_ms)"
}
start_floor() { # `rempart bench floor` on $PORT: the no-op beside a durable append alone
  "$BIN" bench floor --data "$DATA" --listen "127.0.0.1:$PORT" >> "$WORK/floor.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/bench/ledger-append" > /dev/null 2>&1 && return; sleep 0.2; done
  die "rempart bench floor did not become ready (see $WORK/floor.log)"
}
floor_run() { # one run: the no-op endpoint, then the durable append alone; appends to floor-results
  echo "== Floor under wrk, run $1/$RUNS: $CONNS connections, ${DURATION}s each"
  local noop append
  noop=$(wrk_measure floor-noop "http://127.0.0.1:$PORT/api/v1/health/live")
  append=$(wrk_measure floor-append "http://127.0.0.1:$PORT/bench/ledger-append")
  echo "$append $noop" | tee -a "$WORK/floor-results" |
    awk '{ printf "durable append alone %s/s (p50 %s ms, p99 %s ms), no-op %s/s (p50 %s ms, p99 %s ms)\n", $1, $2, $3, $4, $5, $6 }'
}
wrk_run() { # one run: the no-op endpoint, then consultations; appends to wrk-results
  echo "== Rempart under wrk, run $1/$RUNS: $CONNS connections, ${DURATION}s each"
  local noop consult
  noop=$(wrk_measure noop "http://127.0.0.1:$PORT/api/v1/health/live")
  consult=$(wrk_measure consult "http://127.0.0.1:$PORT" "$WORK/consult.lua")
  echo "$consult $noop" | tee -a "$WORK/wrk-results" |
    awk '{ printf "consult %s/s (p50 %s ms, p99 %s ms), no-op %s/s (p50 %s ms, p99 %s ms)\n", $1, $2, $3, $4, $5, $6 }'
}
if [ "$HAVE_WRK" = 1 ] && [ -n "$ACCOUNT" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  TOKEN=$("$BIN" account credential issue --data "$DATA" --login "$ACCOUNT" --days 1 | grep '^rmp_')
  start_server
  : > "$WORK/ids.txt"
  AFTER=0
  while :; do
    PAGE=$(curl -fsS -H "Authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$PORT/api/v1/caseload?purpose=follow_up&limit=1000&after=$AFTER")
    echo "$PAGE" | python3 -c 'import json,sys; print("\n".join(str(e["person_id"]) for e in json.load(sys.stdin)["entries"]))' >> "$WORK/ids.txt"
    AFTER=$(echo "$PAGE" | python3 -c 'import json,sys; n=json.load(sys.stdin)["next"]; print(n if n is not None else "")')
    [ -n "$AFTER" ] || break
  done
  sort -un "$WORK/ids.txt" -o "$WORK/ids.txt"
  echo "caseload through the API: $(grep -c . "$WORK/ids.txt") persons"
  cat > "$WORK/consult.lua" << LUA
local ids = {}
for id in io.open("$WORK/ids.txt"):read("*a"):gmatch("%d+") do ids[#ids + 1] = id end
wrk.headers["Authorization"] = "Bearer $TOKEN"
request = function()
  return wrk.format("GET", "/api/v1/persons/" .. ids[math.random(#ids)] .. "?purpose=follow_up")
end
LUA
  stop_server
else
  HAVE_WRK=0
fi

# --- Baseline: plaintext registry in PostgreSQL with row-level security ----
echo "== Baseline: loading the same CSVs in plaintext into schema bench_rls"
psql "$PG" -q -f "$HERE/schema.sql"
copy() { psql "$PG" -v ON_ERROR_STOP=1 -qc "COPY bench_rls.stage_$1 FROM STDIN WITH (FORMAT csv, HEADER true)" < "$CSV/$2"; }
copy organisation organisations.csv
copy account accounts.csv
copy person persons.csv
copy mandate mandates.csv
psql "$PG" -q -f "$HERE/load.sql"

if [ -z "$ORG" ]; then
  # No organisation from Rempart: the one with the largest live caseload,
  # and its active agent who sees the most.
  read -r ORG ACCOUNT < <(psql "$PG" -qAt -F ' ' -c "
    WITH live AS (
      SELECT organisation_id, account_id, person_id FROM bench_rls.mandate
      WHERE valid_from <= current_date AND (valid_to IS NULL OR valid_to > current_date)),
    top AS (
      SELECT organisation_id FROM live GROUP BY organisation_id
      ORDER BY count(DISTINCT person_id) DESC, organisation_id LIMIT 1)
    SELECT o.code, coalesce(a.login, '')
    FROM top JOIN bench_rls.organisation o ON o.id = top.organisation_id
    LEFT JOIN bench_rls.account a ON a.organisation_id = o.id AND a.role = 'agent' AND a.state = 'active'
    ORDER BY (SELECT count(DISTINCT l.person_id) FROM live l WHERE l.organisation_id = o.id
                AND (l.account_id IS NULL OR l.account_id = a.id)) DESC NULLS LAST, a.login
    LIMIT 1") || true
fi
[ -n "$ORG" ] || die "no organisation holds a live mandate"
CASELOAD=$(psql "$PG" -qAt -v org="$ORG" -v account="$ACCOUNT" -f "$HERE/sample.sql" | sed -n 's/^caseload //p')
[ "${CASELOAD:-0}" -gt 0 ] || die "organisation $ORG / account $ACCOUNT has no live caseload"
echo "organisation $ORG, account ${ACCOUNT:-(none)}: live caseload $CASELOAD persons"

# Sanity: the reader sees exactly the caseload, nothing elsewhere, nothing
# without settings; and it cannot bypass the policy.
HOSTPART="${PG#*://}"
HOSTPART="${HOSTPART#*@}"
READER="postgres://$ROLE:$ROLE@$HOSTPART"
visible() { # visible ORG ACCOUNT: persons the reader sees with these settings
  PGOPTIONS="-c rempart.organisation=$1 -c rempart.account=$2" \
    psql "$READER" -qAtc "select count(*) from bench_rls.person"
}
[ "$(psql "$READER" -qAtc "select rolsuper or rolbypassrls from pg_roles where rolname = current_user")" = f ] ||
  die "$ROLE can bypass row-level security"
SEEN=$(visible "$ORG" "${ACCOUNT:-none}")
[ "$SEEN" = "$CASELOAD" ] || die "RLS: $ROLE sees $SEEN persons for $ORG, its live caseload is $CASELOAD"
SEEN=$(visible "NO-SUCH-ORG-0000" "${ACCOUNT:-none}")
[ "$SEEN" = 0 ] || die "RLS: $ROLE sees $SEEN persons for an organisation that does not exist"
SEEN=$(psql "$READER" -qAtc "select count(*) from bench_rls.person")
[ "$SEEN" = 0 ] || die "RLS: $ROLE sees $SEEN persons without an organisation"
OUTSIDE=$(psql "$PG" -qAtc "select id from bench_rls.person where id not in
  (select person_id from bench_rls.caseload) limit 1")
if [ -n "$OUTSIDE" ]; then
  SEEN=$(PGOPTIONS="-c rempart.organisation=$ORG -c rempart.account=${ACCOUNT:-none}" \
    psql "$READER" -qAtc "select count(*) from bench_rls.person where id = $OUTSIDE")
  [ "$SEEN" = 0 ] || die "RLS: $ROLE reads person $OUTSIDE, outside the caseload of $ORG"
fi
echo "RLS check: $ROLE sees $CASELOAD persons for $ORG, 0 for an unknown organisation, 0 without one"

: > "$WORK/pgbench-results"
pgbench_run() { # one run; appends "tps p50_ms p99_ms" to pgbench-results
  echo "== pgbench with RLS, run $1/$RUNS: $CONNS clients, $THREADS threads, ${DURATION}s, prepared"
  rm -f "$WORK"/pgbench-log.*
  local status=0
  PGOPTIONS="-c rempart.organisation=$ORG -c rempart.account=${ACCOUNT:-none}" \
    "$PGBENCH" -n -M prepared -c "$CONNS" -j "$THREADS" -T "$DURATION" \
    -D caseload="$CASELOAD" -f "$HERE/consult.sql" \
    --log --log-prefix="$WORK/pgbench-log" "$READER" > "$WORK/pgbench-run.out" 2>&1 || status=$?
  grep -E '^(number of (transactions|failed)|latency average|tps)' "$WORK/pgbench-run.out" || true
  [ "$status" = 0 ] || { cat "$WORK/pgbench-run.out"; die "pgbench failed (exit $status)"; }
  local tps n
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$WORK/pgbench-run.out" | head -n 1)
  # Per-transaction log: client, transaction, latency (us), script, epoch, us.
  cat "$WORK"/pgbench-log.* | awk '{ print $3 }' | sort -n > "$WORK/pgbench-latency"
  n=$(wc -l < "$WORK/pgbench-latency")
  [ "$n" -gt 0 ] || die "pgbench logged no transaction"
  awk -v n="$n" -v tps="$tps" '
    BEGIN { r50 = int(n * 0.50); if (r50 < n * 0.50) r50++; r99 = int(n * 0.99); if (r99 < n * 0.99) r99++ }
    NR == r50 { p50 = $1 } NR == r99 { p99 = $1 }
    END { printf "%s %.3f %.3f\n", tps, p50 / 1000, p99 / 1000 }' "$WORK/pgbench-latency" |
    tee -a "$WORK/pgbench-results" | awk '{ printf "run: %s tps, p50 %s ms, p99 %s ms\n", $1, $2, $3 }'
  rm -f "$WORK"/pgbench-log.* "$WORK/pgbench-latency"
}
# Runs alternate, so that the machine's noise falls on both sides alike.
for i in $(seq 1 "$RUNS"); do
  if [ "$HAVE_CONSULT" = 1 ] && [ "$i" -gt 1 ]; then rempart_run "$i"; fi
  if [ "$HAVE_WRK" = 1 ]; then start_server; wrk_run "$i"; stop_server; fi
  if [ "$HAVE_WRK" = 1 ]; then start_floor; floor_run "$i"; stop_server; fi
  pgbench_run "$i"
done
stop_server

PG_TPS=$(awk '{ print $1 }' "$WORK/pgbench-results" | median)
PG_P50=$(awk '{ print $2 }' "$WORK/pgbench-results" | median)
PG_P99=$(awk '{ print $3 }' "$WORK/pgbench-results" | median)

if [ "${BENCH_KEEP:-0}" != 1 ]; then
  psql "$PG" -qc "SET client_min_messages = warning" -c "DROP SCHEMA bench_rls CASCADE" -c "DROP ROLE $ROLE"
fi

printf '\nconsultations, %s persons, organisation %s, account %s, caseload %s,\n' \
  "$PERSONS" "$ORG" "${ACCOUNT:-(none)}" "$CASELOAD"
printf '%s connections (keep-alive), %ss per run, medians of %s runs\n' "$CONNS" "$DURATION" "$RUNS"
printf '%-46s %12s %10s %10s\n' "" "reads/s" "p50 ms" "p99 ms"
if [ "$HAVE_CONSULT" = 1 ]; then
  C_RPS=$(field consult_rps | median); C_P50=$(field consult_p50_ms | median); C_P99=$(field consult_p99_ms | median)
  N_RPS=$(field noop_rps | median); N_P50=$(field noop_p50_ms | median); N_P99=$(field noop_p99_ms | median)
  printf '%-46s %12.0f %10.3f %10.3f\n' "Rempart consult (HTTP, policy, decrypt, audit)" "$C_RPS" "$C_P50" "$C_P99"
  printf '%-46s %12.0f %10.3f %10.3f\n' "Rempart no-op (HTTP only)" "$N_RPS" "$N_P50" "$N_P99"
fi
if [ "$HAVE_WRK" = 1 ]; then
  col() { awk -v c="$1" '{ print $c }' "$WORK/wrk-results" | median; }
  W_RPS=$(col 1); W_P50=$(col 2); W_P99=$(col 3); WN_RPS=$(col 4); WN_P50=$(col 5); WN_P99=$(col 6)
  printf '%-46s %12.0f %10.3f %10.3f\n' "Rempart consult, wrk" "$W_RPS" "$W_P50" "$W_P99"
  printf '%-46s %12.0f %10.3f %10.3f\n' "Rempart no-op, wrk" "$WN_RPS" "$WN_P50" "$WN_P99"
  fcol() { awk -v c="$1" '{ print $c }' "$WORK/floor-results" | median; }
  F_RPS=$(fcol 1); F_P50=$(fcol 2); F_P99=$(fcol 3); FN_RPS=$(fcol 4); FN_P50=$(fcol 5); FN_P99=$(fcol 6)
  printf '%-46s %12.0f %10.3f %10.3f\n' "floor: durable ledger append alone, wrk" "$F_RPS" "$F_P50" "$F_P99"
  printf '%-46s %12.0f %10.3f %10.3f\n' "floor: its no-op, wrk" "$FN_RPS" "$FN_P50" "$FN_P99"
fi
printf '%-46s %12.0f %10.3f %10.3f\n' "baseline: pgbench, PostgreSQL RLS, plaintext" "$PG_TPS" "$PG_P50" "$PG_P99"
if [ "$HAVE_CONSULT" = 1 ]; then
  printf '\nratio rempart/noop:        %s\n' "$(ratio "$C_RPS" "$N_RPS")"
  printf 'ratio rempart/pgbench-rls: %s   (target >= 1.0)\n' "$(ratio "$C_RPS" "$PG_TPS")"
fi
if [ "$HAVE_WRK" = 1 ]; then
  printf 'wrk: ratio rempart/noop %s, rempart/pgbench-rls %s\n' "$(ratio "$W_RPS" "$WN_RPS")" "$(ratio "$W_RPS" "$PG_TPS")"
  printf 'floor: a durable append alone runs at %sx its no-op (a consultation cannot do better)\n' "$(ratio "$F_RPS" "$FN_RPS")"
fi
if [ "$HAVE_WRK" = 1 ]; then
  # CPU per request under wrk, medians over the runs (microseconds).
  printf '\nCPU per request under wrk, us (medians of %s runs)  %10s %10s %10s\n' "$RUNS" "no-op" "consult" "append"
  cpu() { awk -v l="$1" -v k="$2" '$1 == l && $2 == k { print $3 }' "$WORK/cpu-results" | median 2> /dev/null || echo 0; }
  for k in $(awk '{ print $2 }' "$WORK/cpu-results" | sort -u | grep -v '^machine'); do
    printf '  %-48s %10.1f %10.1f %10.1f\n' "$k" "$(cpu noop "$k")" "$(cpu consult "$k")" "$(cpu floor-append "$k")"
  done
  NB=$(cpu noop machine-busy); CB=$(cpu consult machine-busy)
  printf '  %-48s %10.1f %10.1f %10.1f\n' "machine, all processes (busy)" "$NB" "$CB" "$(cpu floor-append machine-busy)"
  printf '  %-48s %9.0f%% %9.0f%% %9.0f%%\n' "machine idle" "$(cpu noop machine-idle-%)" "$(cpu consult machine-idle-%)" "$(cpu floor-append machine-idle-%)"
  printf 'a consultation costs %sx the CPU of a no-op request, load generator included; the 0.5x target needs <= 2.0x\n' \
    "$(ratio "$CB" "$NB")"
fi
if [ "$HAVE_CONSULT" = 1 ]; then :
else
  echo
  echo "rempart bench consult not available: no Rempart figures, no ratios"
fi
