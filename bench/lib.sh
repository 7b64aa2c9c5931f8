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
