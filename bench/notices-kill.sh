#!/usr/bin/env bash
# Breach notices at full scale, killed: every notice of 1,000,000 affected
# persons delivered by one dispatcher killed with SIGKILL mid-way and a
# second one started after it, then counted at the SMTP sink and in the
# letters' directory (SQLite registry).
#
#   bench/notices-kill.sh [PERSONS] [SECONDS_BEFORE_KILL]
#
# Prints the delivery time of each run, the e-mails received, the distinct
# Message-IDs (one per person to reach by e-mail), the duplicates (an
# e-mail the sink accepted in the instant before the kill, at most one per
# worker) and the letters written.
set -euo pipefail
cd "$(dirname "$0")/.."

PERSONS="${1:-1000000}"
KILL_AFTER="${2:-300}"

cargo build --release -q -p rempart-cli
bin="$PWD/${CARGO_TARGET_DIR:-target}/release/rempart"
. bench/lib.sh
work=$(mktemp -d)
start_smtp_sink "$work/maildir"
port=$SINK_PORT
trap 'kill $SINK_PID 2>/dev/null; rm -rf "$work"' EXIT

# The registry and the queued notices (incident 1), nothing delivered.
"$bin" bench notices --persons "$PERSONS" --dir "$work" --emails 0 --letters 0
dispatch=("$bin" incident dispatch 1 --data "$work/data" --smtp "127.0.0.1:$port"
  --from dpo@exemple.invalid --letters "$work/letters" --rate 1000000 --claim-seconds 10)
start=$(date +%s)
"${dispatch[@]}" > "$work/first.log" 2>&1 &
first=$!
sleep "$KILL_AFTER"
kill -9 "$first"
wait "$first" 2>/dev/null || true
killed=$(date +%s)
echo "first dispatcher killed after $((killed - start)) s; the sink holds $(find "$work/maildir/new" -type f | wc -l) e-mails"
"${dispatch[@]}" 2>/dev/null | tee "$work/second.log"
done_at=$(date +%s)
echo "second dispatcher: $((done_at - killed)) s; all: $((done_at - start)) s"
python3 - "$work/maildir/new" "$work/letters/incident-1" <<'PY'
import os, sys, collections
mails, letters = sys.argv[1], sys.argv[2]
ids = collections.Counter()
for name in os.listdir(mails):
    with open(os.path.join(mails, name), "rb") as f:
        for line in f:
            if line.lower().startswith(b"message-id:"):
                ids[line.split(b":", 1)[1].strip()] += 1
                break
            if line in (b"\n", b"\r\n"):
                break
total = sum(ids.values())
dups = sum(n - 1 for n in ids.values() if n > 1)
pdfs = sum(1 for n in os.listdir(letters) if n.endswith(".pdf"))
parts = sum(1 for n in os.listdir(letters) if n.endswith(".part"))
print(f"e-mails received {total}, distinct Message-IDs {len(ids)}, duplicates {dups}; letters {pdfs} (+{parts} partial files)")
PY
