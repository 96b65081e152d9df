#!/usr/bin/env bash
# Run a study for at most SECONDS, then leave it resumable: the first call queues it, later
# calls resume it (runs that never started are queued again) and follow until the time is up.
# With --finish, queued and running runs are stopped once the time is up, and the database is
# copied to $OUT when $OUT is set (merge it elsewhere with `efficientllm import FILE`), with
# the dispatcher's and runners' logs.
#
#   EFFICIENTLLM_HOME=/tmp/study bash scripts/study_part.sh paper 540          # a part
#   EFFICIENTLLM_HOME=/tmp/study OUT=/tmp/o bash scripts/study_part.sh paper 540 --finish
set -u
NAME=${1:?study name or file}
SECONDS_LEFT=${2:?seconds}
FINISH=${3:-}
: "${EFFICIENTLLM_HOME:?set EFFICIENTLLM_HOME to the data dir of the study}"
mkdir -p "$EFFICIENTLLM_HOME"
el() { python3 -c 'import sys; from efficientllm_tui.cli import main; sys.exit(main())' "$@"; }
ID_FILE="$EFFICIENTLLM_HOME/study-$(basename "$NAME" .toml).id"
if [ ! -s "$ID_FILE" ]; then
    el study "$NAME" > "$ID_FILE" || exit $?
    head -1 "$ID_FILE"
fi
ID=$(head -1 "$ID_FILE")
timeout "$SECONDS_LEFT" python3 -c 'import sys; from efficientllm_tui.cli import main; sys.exit(main())' \
    study --resume "$ID" --follow
rc=$?
if [ "$FINISH" = "--finish" ]; then
    el stop --all
    for _ in $(seq 60); do  # until the dispatcher has stored what was stopped
        left=$(el queue --json | python3 -c "import json, sys; print(len(json.load(sys.stdin)))")
        [ "$left" = "0" ] && break
        sleep 1
    done
    if [ -n "${OUT:-}" ]; then
        el runs --json > "$OUT/runs.json" 2>/dev/null
        cp "$EFFICIENTLLM_HOME/efficientllm.duckdb" "$OUT/study.duckdb"
        # what explains a slow or failed run: the dispatcher's log, each run's stderr
        (cd "$EFFICIENTLLM_HOME" && tar czf "$OUT/study-logs.tar.gz" dispatcher.log \
            daemon.log runs/*/stderr.log 2>/dev/null)
    fi
fi
echo "study $ID: follow ended with $rc"
