#!/usr/bin/env bash
# Benchmark: a full backup taken from a hot standby against the same backup taken from
# its primary, in one run on the same data, side by side with pgBackRest's
# backup-standby (which, unlike ours, also connects to the primary).
#
#   bash benches/standby.sh [SCALE]      (default 100: a ~1.5 GB data directory)
#   ROUNDS=3 bash benches/standby.sh     (each backup 3 times, alternating; medians)
#   BIN=target/release                   (use binaries already built there)
#
# Sets up a PostgreSQL 15 primary (16 MiB segments, archive_timeout = 1 s: a standby
# cannot switch segments, so its backup waits until the primary completes the stop
# segment), archiving into a pgcellar and a pgBackRest repository; loads pgbench scale
# SCALE; makes the standby with our own `restore --standby --primary-conninfo`; and,
# under a light pgbench load on the primary (-R 20, so segments keep completing),
# times in turn:
#   base-backup --full --jobs 2 on the primary | on the standby
#   pgbackrest --type=full backup              | with --backup-standby
# Needs: PostgreSQL 15 server binaries, pgbackrest, python3. Run as root (servers run
# as postgres) or as the cluster owner.
set -euo pipefail

SCALE=${1:-100}
ROUNDS=${ROUNDS:-1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
    echo "building release binaries..." >&2
    (cd "$HERE" && cargo build --release --quiet --bins)
    BIN=$HERE/target/release
fi
BIN=$(cd "$BIN" && pwd)

W=$(mktemp -d /tmp/pgcellar-sbbench-XXXXXX)
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
P1=${BENCH_PORT:-54341}
P2=$((P1 + 1))
LOAD_PID=
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/standby" -m immediate stop >/dev/null 2>&1 || true
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/primary" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/bin" "$W/sock1" "$W/sock2" "$W/pgbr-log" "$W/pgbr-lock"
for b in wal-push wal-get pgcellar base-backup restore; do cp "$BIN/$b" "$W/bin/"; done
REPO=(--repo "$W/repo-pgcellar" --server bench)
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
pg1-path=$W/primary
pg1-socket-path=$W/sock1
pg1-port=$P1
pg2-path=$W/standby
pg2-socket-path=$W/sock2
pg2-port=$P2
EOF
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"

"${AS[@]}" "$PGBIN/initdb" -D "$W/primary" -A trust -U postgres --no-sync >/dev/null
cat >> "$W/primary/postgresql.conf" <<EOF
port = $P1
unix_socket_directories = '$W/sock1'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$W/bin/wal-push ${REPO[*]} %p && pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p'
archive_timeout = 1
max_wal_size = 4GB
shared_buffers = 256MB
EOF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >/dev/null
PSQL1=("$PGBIN/psql" -X -q -A -t -h "$W/sock1" -p "$P1" -U postgres -d postgres)
PSQL2=("$PGBIN/psql" -X -q -A -t -h "$W/sock2" -p "$P2" -U postgres -d postgres)
echo "loading pgbench scale $SCALE..." >&2
"$PGBIN/pgbench" -h "$W/sock1" -p "$P1" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
"${PSQL1[@]}" -c "VACUUM ANALYZE"
"${PSQL1[@]}" -c "CHECKPOINT"
"${AS[@]}" "$W/bin/pgcellar" "${REPO[@]}" --conninfo "host=$W/sock1 port=$P1 user=postgres" init 2>/dev/null

echo "making the standby from our own backup..." >&2
"${AS[@]}" "$W/bin/base-backup" "${REPO[@]}" --pgdata "$W/primary" \
    --conninfo "host=$W/sock1 port=$P1 user=postgres" -q --full --jobs 2 >/dev/null
"${AS[@]}" "$W/bin/restore" "${REPO[@]}" -q --jobs 2 --standby \
    --primary-conninfo "host=$W/sock1 port=$P1 user=postgres" "$W/standby"
cat >> "$W/standby/postgresql.conf" <<EOF
port = $P2
unix_socket_directories = '$W/sock2'
EOF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/standby" -l "$W/standby.log" -w start >/dev/null
for i in $(seq 1 600); do
    n=$("${PSQL1[@]}" -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
    [ "$n" = 1 ] && break
    sleep 0.5
done
[ "$n" = 1 ] || { echo "the standby does not stream" >&2; tail -20 "$W/standby.log" >&2; exit 1; }
"${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
DATA_BYTES=$(du -sb --exclude=pg_wal "$W/primary" | cut -f1)

"$PGBIN/pgbench" -h "$W/sock1" -p "$P1" -U postgres -n -c 1 -R 20 -T 100000 postgres >/dev/null 2>&1 &
LOAD_PID=$!
sleep 2

now() { date +%s.%N; }
declare -A T
run() { # name, command...
    local name=$1; shift
    local a b
    "${PSQL1[@]}" -c "CHECKPOINT"
    a=$(now)
    "$@" >/dev/null
    b=$(now)
    T[$name]=$(python3 -c "print(f'{$b - $a:.2f}')")
    echo "  $name: ${T[$name]} s" >&2
}
CELLAR=("${AS[@]}" "$W/bin/base-backup" "${REPO[@]}" -q --full --jobs 2)
PGBR=("${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench --type=full)
for r in $(seq 1 "$ROUNDS"); do
    run "cellar_primary#$r" "${CELLAR[@]}" --pgdata "$W/primary" --conninfo "host=$W/sock1 port=$P1 user=postgres"
    run "cellar_standby#$r" "${CELLAR[@]}" --pgdata "$W/standby" --conninfo "host=$W/sock2 port=$P2 user=postgres"
    run "pgbr_primary#$r" "${PGBR[@]}" backup
    run "pgbr_standby#$r" "${PGBR[@]}" --backup-standby backup
done
"${PSQL2[@]}" -c "SELECT pg_is_in_recovery()" | grep -q t

python3 - <<EOF
import statistics
raw = {$(for k in "${!T[@]}"; do printf '"%s": %s, ' "$k" "${T[$k]}"; done)}
t = {}
for k, v in raw.items():
    t.setdefault(k.split("#")[0], []).append(v)
samples = {k: sorted(v) for k, v in t.items()}
t = {k: statistics.median(v) for k, v in t.items()}
print()
print(f"data directory: {$DATA_BYTES / 1e6:.0f} MB without pg_wal (pgbench scale $SCALE), 2 jobs, {$ROUNDS} round(s), medians")
print(f"{'full backup':22} {'primary':>9} {'standby':>9} {'standby/primary':>16}  target")
print(f"{'pgcellar':22} {t['cellar_primary']:>8.2f}s {t['cellar_standby']:>8.2f}s {t['cellar_standby']/t['cellar_primary']:>15.2f}x  <= 1.2x")
print(f"{'pgbackrest':22} {t['pgbr_primary']:>8.2f}s {t['pgbr_standby']:>8.2f}s {t['pgbr_standby']/t['pgbr_primary']:>15.2f}x")
for k in sorted(samples):
    print(f"  samples {k}: {samples[k]}")
EOF
