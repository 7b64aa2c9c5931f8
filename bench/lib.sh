# Shared by the bench scripts (sourced, never run on its own).

die() { echo "FATAL: $*" >&2; exit 1; }

# population_csv BIN PERSONS TODAY WORK: the generated population's CSV
# directory under WORK, generated once per size and day; prints its path.
population_csv() {
  local csv="$4/csv-$2-$3"
  if [ ! -f "$csv/persons.csv" ]; then
    "$1" generate --persons "$2" --seed 42 --today "$3" --out "$csv" >&2
  fi
  echo "$csv"
}

# imported_postgres BIN PG DB DATA CSV TODAY REJECTS: the database DB on
# PG's server dropped and created anew, then `rempart init` into DATA and
# the import of CSV; prints the database's URL.
imported_postgres() {
  local url="${2%/*}/$3"
  command -v psql > /dev/null || die "psql is missing: apt-get install postgresql-client"
  psql "$2" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $3 WITH (FORCE)" \
    -c "CREATE DATABASE $3" >&2
  rm -rf "$4"
  "$1" init --data "$4" --database "$url" > /dev/null
  "$1" import --data "$4" --database "$url" --today "$6" --rejects "$7" "$5" > /dev/null
  echo "$url"
}

# start_smtp_sink MAILDIR: the tests' SMTP sink (aiosmtpd, installed in
# tools/smtp-sink/.venv if missing) on a free port, storing what it
# accepts in MAILDIR; waits until it listens. Sets SINK_PORT and SINK_PID.
start_smtp_sink() {
  local sink=tools/smtp-sink/.venv
  if [ ! -x "$sink/bin/python" ]; then
    python3 -m venv "$sink"
    "$sink/bin/pip" install -q --disable-pip-version-check -r tools/smtp-sink/requirements.txt
  fi
  SINK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$sink/bin/python" -m aiosmtpd -n -l "127.0.0.1:$SINK_PORT" -c aiosmtpd.handlers.Mailbox "$1" &
  SINK_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  die "the SMTP sink did not listen on 127.0.0.1:$SINK_PORT"
}
