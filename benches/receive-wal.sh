#!/usr/bin/env bash
# Benchmark: `pgcellar receive-wal` (WAL streamed over a physical replication slot),
# in one run on one PostgreSQL 15 cluster (16 MiB segments, wal_level = replica,
# fsync = on, synchronous_commit = on, archive_mode = off: WAL reaches the repository
# by the stream only):
#
#   bash benches/receive-wal.sh
#   SECONDS_PER=30 ROUNDS=20 ASYNC_ROUNDS=5 bash benches/receive-wal.sh
#   BIN=target/release bash benches/receive-wal.sh     (default BIN=target/debug)
#   KEEP=1 ...                                          (keep the scratch directory)
#   PARTIAL_INTERVAL=N ...     (receive-wal --partial-interval, default 1 s)
#   ROUNDS=0 ASYNC_ROUNDS=0 ... (step 1 only)
#   LAT_ROUNDS=N ...           (rounds of step 1, default 3: commit latency drifts)
#
# 1. Commit latency, synchronous: pgbench -c 1 -T SECONDS_PER of single-row INSERTs
#    with (a) no synchronous standby, (b) PostgreSQL's own pg_receivewal --synchronous
#    into a local directory, (c) pgcellar receive-wal --synchronous (which runs that
#    same pg_receivewal into its spool and copies the spool into the repository every
#    second); target (c)/(b) <= 2.0x.
# 2. Acknowledged commits lost when the primary is killed (kill -9 of the postmaster
#    and all its children in one call, like a crashed host), synchronous mode, ROUNDS
#    times: a writer inserts rows one by one (psql, autocommit) and records every
#    acknowledged value; the primary is killed after KILL_AFTER s; the receiver is
#    stopped (SIGTERM: it stores its final partial), the repository is restored (one
#    base backup, taken at the start, the newest streamed partial in pg_wal) and
#    started until promoted; lost = acknowledged values missing there (target 0).
#    The killed primary is then restarted (crash recovery) for the next round.
# 3. Asynchronous mode under load: pgbench -c 4 -T 10, primary killed after
#    ASYNC_KILL_AFTER s, ASYNC_ROUNDS times; lost window = kill time - newest
#    restored commit time (target <= 1 s), and rows lost (rows the restarted primary
#    has that the restore lacks). For comparison, the same restore without the
#    streamed partial: what archive_command alone would have kept (everything since
#    the last completed 16 MiB segment is lost).
#
# pgBackRest has no WAL streaming (only archive-push from archive_command), so there
# is no pgBackRest column here; its equivalent is the archive-only column of step 3.
#
# Needs: PostgreSQL 15 server binaries and pg_receivewal, pgbench, setpriv (when
# root). Run as root (servers and receivers run as postgres) or as the cluster owner.
set -euo pipefail

SECONDS_PER=${SECONDS_PER:-15}
ROUNDS=${ROUNDS:-10}
ASYNC_ROUNDS=${ASYNC_ROUNDS:-3}
LAT_ROUNDS=${LAT_ROUNDS:-3}
KILL_AFTER=${KILL_AFTER:-3}
ASYNC_KILL_AFTER=${ASYNC_KILL_AFTER:-6}
PARTIAL_INTERVAL=${PARTIAL_INTERVAL:-1} # receive-wal --partial-interval (its default)
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
BIN=${BIN:-$HERE/target/debug}
BIN=$(cd "$BIN" && pwd)
for b in pgcellar base-backup restore wal-get wal-push; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing (cargo build --bins)" >&2; exit 1; }
done
if [ -x "$PGBIN/pg_receivewal" ]; then PGRW=$PGBIN/pg_receivewal; else PGRW=/usr/bin/pg_receivewal; fi
[ -x "$PGRW" ] || { echo "no pg_receivewal (apt-get install postgresql-client-15)" >&2; exit 1; }
T0=$(date +%s)

W=$(mktemp -d /tmp/pgcellar-rwbench-XXXXXX)
chmod 755 "$W"
AS=()      # runs a command as postgres (returns when it does)
SETPRIV=() # execs a command as postgres: $! of a background job is the command's pid
if [ "$(id -u)" = 0 ]; then
    AS=(runuser -u postgres --)
    SETPRIV=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
PORT=${BENCH_PORT:-54361}
RPORT=$((PORT + 1))
RECV_PID=
PLAIN_PID=
WRITER_PID=
LOAD_PID=
RECV_LOG=
cleanup() {
    local rc=$?
    for p in $WRITER_PID $LOAD_PID; do kill "$p" 2>/dev/null || true; done
    [ -n "$PLAIN_PID" ] && kill -INT "$PLAIN_PID" 2>/dev/null || true
    [ -n "$RECV_PID" ] && kill -TERM "$RECV_PID" 2>/dev/null || true
    for p in $RECV_PID $PLAIN_PID; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    if [ "$rc" != 0 ]; then
        echo "failed (exit $rc); last lines of the logs:" >&2
        for f in "$RECV_LOG" "$W/primary.log" "$W/restored.log"; do
            [ -n "$f" ] && [ -f "$f" ] && { echo "== $f" >&2; tail -15 "$f" >&2; }
        done
    fi
    for d in primary restored; do
        [ -f "$W/$d/postmaster.pid" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

mkdir -p "$W/bin" "$W/sock" "$W/rsock"
for b in pgcellar base-backup restore wal-get wal-push; do cp "$BIN/$b" "$W/bin/"; done
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"

CONN="host=$W/sock port=$PORT user=postgres dbname=postgres"
REPO=(--repo "$W/repo" --server main)
PSQL=("$PGBIN/psql" -X -q -A -t -h "$W/sock" -p "$PORT" -U postgres -d postgres)
RPSQL=("$PGBIN/psql" -X -q -A -t -h "$W/rsock" -p "$RPORT" -U postgres -d postgres)
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }
log() { echo "[$(date +%T)] $*" >&2; }

"${AS[@]}" "$PGBIN/initdb" -D "$W/primary" -A trust -U postgres >/dev/null
cat >> "$W/primary/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
fsync = on
synchronous_commit = on
archive_mode = off
max_wal_size = 1GB
EOF
start_primary() { # (after a kill, pg_ctl notes the stale postmaster.pid: not shown)
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w -t 300 start >"$W/pg_ctl.out" 2>&1 \
        || { cat "$W/pg_ctl.out" >&2; exit 1; }
}
start_primary
"${PSQL[@]}" -c "CREATE TABLE t (id bigserial PRIMARY KEY, v int, at timestamptz DEFAULT clock_timestamp())"
echo 'INSERT INTO t(v) VALUES (1);' > "$W/insert.sql"
chmod 644 "$W/insert.sql"
"${AS[@]}" "$W/bin/pgcellar" "${REPO[@]}" --conninfo "$CONN" init >/dev/null 2>&1 \
    || { "${AS[@]}" "$W/bin/pgcellar" "${REPO[@]}" --conninfo "$CONN" init; exit 1; }

set_sync_names() {
    "${PSQL[@]}" -c "ALTER SYSTEM SET synchronous_standby_names = '$1'"
    "${PSQL[@]}" -c "SELECT pg_reload_conf()" >/dev/null
}
# wait_stream APPNAME sync|async: until pg_stat_replication shows it streaming (and
# sync_state = 'sync' for sync).
wait_stream() {
    local want=streaming q
    q="SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = '$1'"
    [ "$2" = sync ] && want=streaming/sync
    local s=
    for _ in $(seq 1 600); do
        s=$("${PSQL[@]}" -c "$q" 2>/dev/null || true)
        case "$2/$s" in
            sync/streaming/sync | async/streaming/*) return 0 ;;
        esac
        sleep 0.1
    done
    echo "$1 is not $want in pg_stat_replication (got '$s')" >&2
    exit 1
}

RECV_N=0
# start_receiver sync|async: pgcellar receive-wal into the one spool, as postgres;
# waits until it streams (and, when synchronous_standby_names names it, is sync).
start_receiver() {
    local extra=()
    [ "$1" = sync ] && extra=(--synchronous)
    RECV_N=$((RECV_N + 1))
    RECV_LOG=$W/receiver-$RECV_N.log
    "${SETPRIV[@]}" "$W/bin/pgcellar" -v "${REPO[@]}" --conninfo "$CONN" receive-wal \
        --slot pgcellar --create-slot --spool "$W/spool" --pg-receivewal "$PGRW" --partial-interval "$PARTIAL_INTERVAL" \
        "${extra[@]}" >"$RECV_LOG" 2>&1 &
    RECV_PID=$!
    # Streaming first; sync_state is 'sync' only once synchronous_standby_names names it.
    wait_stream pgcellar async
    [ "$1" = sync ] && [ "$("${PSQL[@]}" -c "SHOW synchronous_standby_names")" = pgcellar ] \
        && wait_stream pgcellar sync
    return 0
}
# stop_receiver: SIGTERM to pgcellar itself; it stops pg_receivewal and stores the
# spool (the final partial) before it exits.
STOPPED_AT=
stop_receiver() {
    local rc=0
    kill -TERM "$RECV_PID"
    for _ in $(seq 1 300); do kill -0 "$RECV_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RECV_PID" 2>/dev/null; then
        echo "receive-wal did not stop within 30 s of SIGTERM" >&2
        exit 1
    fi
    wait "$RECV_PID" || rc=$?
    RECV_PID=
    [ "$rc" = 0 ] || { echo "receive-wal exited with $rc" >&2; tail -20 "$RECV_LOG" >&2; exit 1; }
    STOPPED_AT=$(grep -o 'the repository holds the stream up to .*' "$RECV_LOG" | tail -1 | sed 's/.* up to //')
}
# kill_primary: like a crashed host, every process of the cluster at once (the
# postmaster is stopped first so that it forks no backend between the listing of its
# children and the kill); sets KILLED_AT (the time just before the kill, no fork).
KILLED_AT=
kill_primary() {
    local pm kids p
    pm=$(head -1 "$W/primary/postmaster.pid")
    kill -STOP "$pm"
    kids=$(pgrep -P "$pm" || true)
    KILLED_AT=$EPOCHREALTIME
    # shellcheck disable=SC2086
    kill -9 "$pm" $kids 2>/dev/null || true
    for p in $pm $kids; do
        for _ in $(seq 1 600); do ps -p "$p" >/dev/null 2>&1 || break; sleep 0.1; done
    done
}
# pgbench_latency LABEL: -c 1 single-row inserts; appends the sample to LAT[LABEL],
# TPS[LABEL] and sets LAST_LAT.
declare -A LAT TPS
LAST_LAT=
pgbench_latency() {
    local out lat tps
    out=$("$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -c 1 -T "$SECONDS_PER" -f "$W/insert.sql" postgres 2>&1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)
    [ -n "$lat" ] && [ -n "$tps" ] || { echo "$out" >&2; exit 1; }
    tps=$(calc "$tps" 1)
    LAT[$1]="${LAT[$1]:-} $lat"
    TPS[$1]="${TPS[$1]:-} $tps"
    LAST_LAT=$lat
    log "  $1: latency $lat ms, $tps tps"
}
median() { # of the numbers in $1
    tr ' ' '\n' <<<"$1" | grep . | sort -g \
        | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# restore_and_start [archive-only]: restore the latest backup into $W/restored, start
# it until it is promoted. With archive-only, the streamed partial placed in pg_wal is
# removed first (recovery then ends at the last complete segment). Sets RESTORE_S
# (restore + recovery seconds) and PLACED (the partial's segment or "-").
restore_and_start() {
    local a b
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/restored" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W/restored" "$W/restored.pgcellar-spool"
    a=$(now)
    "${AS[@]}" "$W/bin/restore" "${REPO[@]}" "$W/restored" >"$W/restore.log" 2>&1 \
        || { cat "$W/restore.log" >&2; exit 1; }
    PLACED=$(sed -n 's/.*placed the stream.s partial segment \([0-9A-F]\{24\}\) in pg_wal.*/\1/p' "$W/restore.log" | tail -1)
    if [ "${1:-}" = archive-only ] && [ -n "$PLACED" ]; then
        rm -f "$W/restored/pg_wal/$PLACED"
    fi
    PLACED=${PLACED:--}
    cat >> "$W/restored/postgresql.conf" <<EOF
port = $RPORT
unix_socket_directories = '$W/rsock'
listen_addresses = ''
archive_mode = off
EOF
    # The backup carries the primary's ALTER SYSTEM synchronous_standby_names;
    # restore clears it in the copy (which has no standby).
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/restored" -l "$W/restored.log" -w -t 600 start >"$W/pg_ctl.out" 2>&1 \
        || { cat "$W/pg_ctl.out" >&2; tail -30 "$W/restored.log" >&2; exit 1; }
    local r=
    for _ in $(seq 1 3000); do
        r=$("${RPSQL[@]}" -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)
        [ "$r" = f ] && break
        sleep 0.1
    done
    [ "$r" = f ] || { echo "the restored cluster did not finish recovery" >&2; tail -30 "$W/restored.log" >&2; exit 1; }
    b=$(now)
    RESTORE_S=$(calc "$b - $a" 1)
}
stop_restored() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/restored" -m immediate stop >/dev/null
    rm -rf "$W/restored" "$W/restored.pgcellar-spool" # (wal-get's look-ahead spool)
}

# ---- 1. commit latency ---------------------------------------------------------
# LAT_ROUNDS rounds of (a), (b), (c) - (b) and (c) in turn first - since commit
# latency on a shared disk drifts; medians, and the median of each round's (c)/(b).
log "1. commit latency: pgbench -c 1 -T $SECONDS_PER, single-row INSERT, $LAT_ROUNDS round(s)"
measure_plain() {
    "${PSQL[@]}" -c "SELECT pg_create_physical_replication_slot('s2', true)" >/dev/null
    mkdir -p "$W/plain"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$W/plain"
    "${SETPRIV[@]}" "$PGRW" --synchronous -D "$W/plain" --slot s2 --no-password \
        -d "$CONN application_name=pgrw" >"$W/pg_receivewal.log" 2>&1 &
    PLAIN_PID=$!
    set_sync_names pgrw
    wait_stream pgrw sync
    pgbench_latency pg_receivewal
    set_sync_names ''
    kill -INT "$PLAIN_PID"
    wait "$PLAIN_PID" || true
    PLAIN_PID=
    "${PSQL[@]}" -c "SELECT pg_drop_replication_slot('s2')" >/dev/null
    rm -rf "$W/plain"
}
measure_cellar() {
    start_receiver sync
    set_sync_names pgcellar
    wait_stream pgcellar sync
    pgbench_latency pgcellar
}
RATIOS=
for lr in $(seq 1 "$LAT_ROUNDS"); do
    if [ -n "$RECV_PID" ]; then set_sync_names ''; stop_receiver; fi
    set_sync_names ''
    pgbench_latency none
    if [ $((lr % 2)) = 1 ]; then
        measure_plain; lb=$LAST_LAT
        measure_cellar; lc=$LAST_LAT
    else
        measure_cellar; lc=$LAST_LAT
        set_sync_names ''; stop_receiver
        measure_plain; lb=$LAST_LAT
    fi
    RATIOS="$RATIOS $(calc "$lc / $lb" 2)"
done
# Steps 2 and 3 go on with the receiver (synchronous) of step 1.
if [ -z "$RECV_PID" ]; then start_receiver sync; fi
set_sync_names pgcellar
wait_stream pgcellar sync

# ---- 2. kill -9 of the primary, synchronous ------------------------------------
log "2. synchronous, primary killed $ROUNDS times"
log "  base backup (WAL by the stream only: archive_mode = off)"
"${AS[@]}" "$W/bin/base-backup" "${REPO[@]}" --pgdata "$W/primary" --conninfo "$CONN" -q >/dev/null
writer() { # FIRST_V FILE: insert FIRST_V, FIRST_V+1, ... one per psql (autocommit)
    local i=$1
    while "${PSQL[@]}" -c "INSERT INTO t(v) VALUES ($i) RETURNING v" >>"$2" 2>/dev/null; do
        i=$((i + 1))
    done
}
declare -a S_ACKED S_LAST S_MAX S_MISSING S_LOST S_PLACED S_RESTORE S_UPTO
TOTAL_LOST=0
TOTAL_MISSING=0
for r in $(seq 1 "$ROUNDS"); do
    if [ "$r" -gt 1 ]; then
        start_primary
        start_receiver sync
    fi
    base=$((r * 1000000))
    acked=$W/acked-$r.txt
    : > "$acked"
    writer "$((base + 1))" "$acked" &
    WRITER_PID=$!
    sleep "$KILL_AFTER"
    kill_primary
    wait "$WRITER_PID" || true
    WRITER_PID=
    stop_receiver
    n=$(grep -c . "$acked" || true)
    last=$(sort -n "$acked" | tail -1)
    last=${last:-$base}
    restore_and_start
    rmax=$("${RPSQL[@]}" -c "SELECT coalesce(max(v), $base) FROM t WHERE v > $base AND v < $((base + 1000000))")
    missing=$("${RPSQL[@]}" -c "SELECT count(*) FROM unnest('{$(paste -sd, "$acked")}'::int[]) a(v) WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.v = a.v)")
    stop_restored
    lost=$((last - rmax))
    [ "$lost" -lt 0 ] && lostc=0 || lostc=$lost
    TOTAL_LOST=$((TOTAL_LOST + lostc))
    TOTAL_MISSING=$((TOTAL_MISSING + missing))
    S_ACKED[r]=$n; S_LAST[r]=$((last - base)); S_MAX[r]=$((rmax - base)); S_MISSING[r]=$missing
    S_LOST[r]=$lost; S_PLACED[r]=$PLACED; S_RESTORE[r]=$RESTORE_S; S_UPTO[r]=$STOPPED_AT
    log "  round $r: $n acknowledged, last $((last - base)), restored max $((rmax - base)), missing $missing (partial $PLACED, stream up to $STOPPED_AT, restore+recovery ${RESTORE_S}s)"
done

# ---- 3. asynchronous under pgbench load ----------------------------------------
log "3. asynchronous, pgbench -c 4 -T 10, primary killed after ${ASYNC_KILL_AFTER}s, $ASYNC_ROUNDS times"
declare -a A_WIN A_ROWS A_LOST A_AWIN A_ALOST A_PLACED A_TPS
for r in $(seq 1 "$ASYNC_ROUNDS"); do
    start_primary
    set_sync_names ''
    start_receiver async
    t_start=$(now)
    "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -c 4 -T 10 -f "$W/insert.sql" postgres >"$W/pgbench-async.log" 2>&1 &
    LOAD_PID=$!
    sleep "$ASYNC_KILL_AFTER"
    kill_primary
    t_kill=$KILLED_AT
    wait "$LOAD_PID" || true
    LOAD_PID=
    stop_receiver
    since="at >= to_timestamp($t_start)"
    restore_and_start
    placed=$PLACED
    st=$("${RPSQL[@]}" -c "SELECT extract(epoch FROM max(at)) || ' ' || count(*) FILTER (WHERE $since) FROM t")
    stop_restored
    restore_and_start archive-only
    ar=$("${RPSQL[@]}" -c "SELECT extract(epoch FROM max(at)) || ' ' || count(*) FILTER (WHERE $since) FROM t")
    stop_restored
    # What the primary itself committed (it has every acknowledged commit).
    start_primary
    prows=$("${PSQL[@]}" -c "SELECT count(*) FROM t WHERE $since")
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/primary" -m fast -w stop >/dev/null
    A_WIN[r]=$(calc "$t_kill - ${st% *}" 3)
    A_ROWS[r]=$prows
    A_LOST[r]=$((prows - ${st#* }))
    A_AWIN[r]=$(calc "$t_kill - ${ar% *}" 1)
    A_ALOST[r]=$((prows - ${ar#* }))
    A_PLACED[r]=$placed
    A_TPS[r]=$(calc "$prows / ($t_kill - $t_start)" 0)
    log "  round $r: $prows rows committed (~${A_TPS[r]} tps), lost window ${A_WIN[r]}s, ${A_LOST[r]} rows lost; archive only: ${A_AWIN[r]}s, ${A_ALOST[r]} rows lost (stream up to $STOPPED_AT)"
done

# ---- figures ---------------------------------------------------------------------
ELAPSED=$(($(date +%s) - T0))
echo
echo "PostgreSQL 15, 16 MiB segments, fsync = on, synchronous_commit = on, archive_mode = off; $(nproc) CPUs, $(df -T "$W" | awk 'NR == 2 { print $2 }') at $W"
echo
echo "1. commit latency, pgbench -c 1 -T $SECONDS_PER, single-row INSERT; medians of $LAT_ROUNDS round(s)"
MB=$(median "${LAT[pg_receivewal]}")
printf "%-44s %12s %10s %8s   %s\n" "synchronous standby" "latency avg" "tps" "vs (b)" "samples (ms)"
row1() { # label key
    local m
    m=$(median "${LAT[$2]}")
    printf "%-44s %9s ms %10s %7sx  %s\n" "$1" "$m" "$(calc "$(median "${TPS[$2]}")" 1)" "$(calc "$m / $MB" 2)" "${LAT[$2]# }"
}
row1 "(a) none" none
row1 "(b) pg_receivewal --synchronous (local dir)" pg_receivewal
row1 "(c) pgcellar receive-wal --synchronous" pgcellar
echo "target: (c)/(b) <= 2.0x -> $(calc "$(median "${LAT[pgcellar]}") / $MB" 2)x of the medians; per round (c)/(b):${RATIOS} (median $(median "$RATIOS")x)"
echo
echo "2. synchronous, primary killed (kill -9, all processes) after ${KILL_AFTER}s of one-by-one autocommit INSERTs, $ROUNDS rounds"
printf "%5s %7s %11s %14s %6s %14s %26s %10s\n" round acked "last acked" "restored max" lost "acked missing" "partial placed" "restore s"
for r in $(seq 1 "$ROUNDS"); do
    printf "%5s %7s %11s %14s %6s %14s %26s %10s\n" "$r" "${S_ACKED[r]}" "${S_LAST[r]}" "${S_MAX[r]}" \
        "${S_LOST[r]}" "${S_MISSING[r]}" "${S_PLACED[r]}" "${S_RESTORE[r]}"
done
echo "total lost acknowledged commits: $TOTAL_LOST by last value, $TOTAL_MISSING acknowledged values missing (target 0)"
echo "  (lost = last acked - restored max; negative = the commit in flight at the kill was restored too)"
echo
echo "3. asynchronous under pgbench -c 4 -T 10 (primary killed after ${ASYNC_KILL_AFTER}s), $ASYNC_ROUNDS rounds"
printf "%5s %9s %6s %16s %10s %26s %19s %14s\n" round committed tps "lost window s" "rows lost" "partial placed" "archive-only win s" "arch rows lost"
for r in $(seq 1 "$ASYNC_ROUNDS"); do
    printf "%5s %9s %6s %16s %10s %26s %19s %14s\n" "$r" "${A_ROWS[r]}" "${A_TPS[r]}" "${A_WIN[r]}" "${A_LOST[r]}" \
        "${A_PLACED[r]}" "${A_AWIN[r]}" "${A_ALOST[r]}"
done
echo "target: lost window <= 1 s. lost window = kill time - newest restored commit (clock_timestamp() of its INSERT);"
echo "rows lost = rows the restarted primary has (every acknowledged commit) minus the restore's, for the round."
echo "archive-only = the same restore without the streamed partial: what archive_command alone keeps"
echo "(everything since the last completed 16 MiB segment is lost; no archive_timeout)."
echo
echo "whole run: ${ELAPSED}s"
