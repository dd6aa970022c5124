#!/usr/bin/env bash
# Benchmark: base-backup and restore vs pgBackRest (full/incr, zst, process-max 2) and
# pg_basebackup, in the same run on the same data.
#
#   bash benches/backup.sh [SCALE] [TEXT_ROWS]    (defaults 100 and 2000000: ~2 GB)
#   BENCH_REPEAT=3 bash benches/backup.sh          (full backups and restores 3 times each,
#                                                    alternating tools; medians reported)
#
# Creates a scratch PostgreSQL 15 cluster (16 MiB segments) whose archive_command
# pushes every WAL file into both repositories (so both tools can confirm their WAL),
# loads pgbench scale SCALE plus a table of random text (realistic compression), then
# times, one tool after the other on a warm cache:
#   1. full backup         base-backup --full --jobs 2 | pgbackrest --type=full | pg_basebackup
#   2. no-change incremental  base-backup --jobs 2   | pgbackrest --type=incr
#   3. incremental after 20 s of pgbench (both, same changes)
#   4. restore              restore --jobs 2         | pgbackrest restore --process-max=2
# and prints wall times, ratios and repository bytes (du counts hard links once).
# BENCH_WORKDIR=DIR keeps the loaded cluster for the next run. Needs: PostgreSQL 15
# server binaries, pgbackrest, python3. Run as root (servers run as postgres) or as
# the cluster owner.
set -euo pipefail

SCALE=${1:-100}
REPEAT=${BENCH_REPEAT:-1}
TEXT_ROWS=${2:-2000000}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }

echo "building release binaries..." >&2
(cd "$HERE" && cargo build --release --quiet --bin wal-push --bin wal-get --bin pgcellar --bin base-backup --bin restore)

if [ -n "${BENCH_WORKDIR:-}" ]; then W=$BENCH_WORKDIR; mkdir -p "$W"; else W=$(mktemp -d /tmp/pgcellar-bbench-XXXXXX); fi
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
PORT=${BENCH_PORT:-54329}
cleanup() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"/repo-* "$W"/r-* "$W"/pgbb
    [ -n "${BENCH_WORKDIR:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

rm -rf "$W"/repo-* "$W"/r-* "$W"/pgbb
mkdir -p "$W/bin" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock"
for b in wal-push wal-get pgcellar base-backup restore; do cp "$HERE/target/release/$b" "$W/bin/"; done
cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo-pgbackrest
compress-type=zst
process-max=2
log-path=$W/pgbr-log
lock-path=$W/pgbr-lock
log-level-console=warn
log-level-file=off
start-fast=y
archive-timeout=600
repo1-retention-full=99

[bench]
pg1-path=$W/pgdata
pg1-socket-path=$W/sock
pg1-port=$PORT
EOF
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"

REUSE=0
[ -f "$W/pgdata/PG_VERSION" ] && REUSE=1
if [ $REUSE = 0 ]; then
    "${AS[@]}" "$PGBIN/initdb" -D "$W/pgdata" -A trust -U postgres --no-sync >/dev/null
fi
cat >> "$W/pgdata/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$W/bin/wal-push --repo $W/repo-pgcellar --server bench %p && pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p'
max_wal_size = 4GB
shared_buffers = 256MB
EOF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -A -t -h "$W/sock" -p "$PORT" -U postgres -d postgres)
if [ $REUSE = 0 ]; then
    echo "loading pgbench scale $SCALE and $TEXT_ROWS rows of random text..." >&2
    "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
    "${PSQL[@]}" -c "CREATE TABLE random_text AS SELECT g AS id,
        md5(random()::text) || ' ' || md5(random()::text) || ' ' || substr(repeat(md5(random()::text), 4), 1, 90) AS body
        FROM generate_series(1, $TEXT_ROWS) g"
    # As a nightly job would find it: vacuumed (hint bits set) and checkpointed.
    "${PSQL[@]}" -c "VACUUM ANALYZE"
    "${PSQL[@]}" -c "CHECKPOINT"
fi
"${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-pgcellar" --server bench \
    --conninfo "host=$W/sock port=$PORT user=postgres" init 2>/dev/null
"${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
DATA_BYTES=$(du -sb "$W/pgdata" | cut -f1)
# Files must age past the safe horizon, as they would between nightly backups.
sleep 3

# Before each timed step: checkpoint and wait until the archiver has caught up, so
# that neither tool pays for the other's leftovers (dirty buffers, WAL backlog).
settle() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local seg last i
    seg=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_switch_wal())")
    for i in $(seq 1 1200); do
        last=$("${PSQL[@]}" -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if [[ "$last" == "$seg" || "$last" > "$seg" ]]; then return; fi
        sleep 0.5
    done
    echo "archiver did not catch up with $seg" >&2
    exit 1
}
now() { date +%s.%N; }
declare -A T
run() { # name, command...
    local name=$1; shift
    local a b
    settle
    a=$(now)
    "$@" >/dev/null
    b=$(now)
    T[$name]=$(python3 -c "print(f'{$b - $a:.2f}')")
    echo "  $name: ${T[$name]} s" >&2
}
CELLAR=("${AS[@]}" "$W/bin/base-backup" --repo "$W/repo-pgcellar" --server bench
    --pgdata "$W/pgdata" --conninfo "host=$W/sock port=$PORT user=postgres" -q)
PGBR=("${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)

echo "full backups..." >&2
run cellar_full "${CELLAR[@]}" --full --jobs 2
run pgbr_full "${PGBR[@]}" --type=full backup
run pg_basebackup "${AS[@]}" "$PGBIN/pg_basebackup" -h "$W/sock" -p "$PORT" -U postgres \
    -D "$W/pgbb" -X none -c fast --no-sync
BB_BYTES=$(du -sb "$W/pgbb" | cut -f1)
rm -rf "$W/pgbb"
B_CELLAR_FULL=$(du -sb "$W/repo-pgcellar/bench/backups" | cut -f1)
B_PGBR_FULL=$(du -sb "$W/repo-pgbackrest/backup" | cut -f1)
for i in $(seq 2 "$REPEAT"); do
    run "cellar_full#$i" "${CELLAR[@]}" --full --jobs 2
    run "pgbr_full#$i" "${PGBR[@]}" --type=full backup
done
B_CELLAR_BEFORE=$(du -sb "$W/repo-pgcellar/bench/backups" | cut -f1)
B_PGBR_BEFORE=$(du -sb "$W/repo-pgbackrest/backup" | cut -f1)
sleep 3

echo "no-change incrementals..." >&2
run cellar_incr0 "${CELLAR[@]}" --jobs 2
run pgbr_incr0 "${PGBR[@]}" --type=incr backup
B_CELLAR_INCR0=$(du -sb "$W/repo-pgcellar/bench/backups" | cut -f1)
B_PGBR_INCR0=$(du -sb "$W/repo-pgbackrest/backup" | cut -f1)

echo "20 s of pgbench, then incrementals..." >&2
"$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -c 2 -j 2 -T 20 postgres >/dev/null 2>&1
run cellar_incr1 "${CELLAR[@]}" --jobs 2
run pgbr_incr1 "${PGBR[@]}" --type=incr backup
B_CELLAR_INCR1=$(du -sb "$W/repo-pgcellar/bench/backups" | cut -f1)
B_PGBR_INCR1=$(du -sb "$W/repo-pgbackrest/backup" | cut -f1)

echo "restores (latest backup of each)..." >&2
mkdir -p "$W/r-cellar" "$W/r-pgbr"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$W/r-cellar" "$W/r-pgbr"
for i in $(seq 1 "$REPEAT"); do
    rm -rf "$W/r-cellar/data" "$W/r-pgbr/data"
    suffix=$([ "$i" = 1 ] && echo "" || echo "#$i")
    run "cellar_restore$suffix" "${AS[@]}" "$W/bin/restore" --repo "$W/repo-pgcellar" --server bench -q --jobs 2 "$W/r-cellar/data"
    run "pgbr_restore$suffix" "${PGBR[@]}" --pg1-path="$W/r-pgbr/data" --process-max=2 restore
done
R_CELLAR=$(du -sb "$W/r-cellar/data" | cut -f1)
R_PGBR=$(du -sb "$W/r-pgbr/data" | cut -f1)

python3 - <<EOF
import statistics
raw = {$(for k in "${!T[@]}"; do printf '"%s": %s, ' "$k" "${T[$k]}"; done)}
# Medians over repeats ("name#i" samples); the samples are printed too.
t = {}
for k, v in raw.items():
    t.setdefault(k.split("#")[0], []).append(v)
samples = {k: sorted(v) for k, v in t.items()}
t = {k: statistics.median(v) for k, v in t.items()}
mb = lambda b: b / 1e6
print()
print(f"data directory: {mb($DATA_BYTES):.0f} MB (pgbench scale $SCALE + $TEXT_ROWS text rows), 2 jobs/processes")
print(f"{'step':34} {'pgcellar':>10} {'pgbackrest':>11} {'ratio':>7}  target")
rows = [("full backup", "cellar_full", "pgbr_full", "<= 0.8x"),
        ("no-change incremental", "cellar_incr0", "pgbr_incr0", "<= 0.5x"),
        ("incremental after 20 s pgbench", "cellar_incr1", "pgbr_incr1", ""),
        ("restore", "cellar_restore", "pgbr_restore", "<= 0.8x")]
for label, a, b, target in rows:
    print(f"{label:34} {t[a]:>9.2f}s {t[b]:>10.2f}s {t[a]/t[b]:>6.2f}x  {target}")
print(f"{'pg_basebackup (plain, uncompressed)':34} {t['pg_basebackup']:>9.2f}s  ({mb($BB_BYTES):.0f} MB)")
if $REPEAT > 1:
    for k in ("cellar_full", "pgbr_full", "cellar_restore", "pgbr_restore"):
        print(f"  samples {k}: {samples[k]}")
print()
print("repository bytes of backups (du, hard links counted once):")
print(f"{'':34} {'pgcellar':>10} {'pgbackrest':>11} {'ratio':>7}")
for label, a, b in [("one full backup", $B_CELLAR_FULL, $B_PGBR_FULL),
                    ("added by no-change incremental", $B_CELLAR_INCR0 - $B_CELLAR_BEFORE, $B_PGBR_INCR0 - $B_PGBR_BEFORE),
                    ("added by incremental after pgbench", $B_CELLAR_INCR1 - $B_CELLAR_INCR0, $B_PGBR_INCR1 - $B_PGBR_INCR0)]:
    print(f"{label:34} {mb(a):>8.1f}MB {mb(b):>9.1f}MB {a/b:>6.2f}x")
print(f"full backup target: repository bytes <= 1.1x")
print(f"restored data directory: pgcellar {mb($R_CELLAR):.0f} MB, pgbackrest {mb($R_PGBR):.0f} MB")
EOF
