#!/usr/bin/env bash
# Benchmark: serial wal-push of real 16 MiB segments vs pgbackrest archive-push.
#
#   bash benches/wal-push.sh [SEGMENTS]      (default 20; run as root or as a normal user)
#
# Creates a scratch PostgreSQL 15 cluster with default 16 MiB segments, generates WAL
# with pgbench, collects SEGMENTS real segments, then pushes each one with
# `wal-push` (zstd, local repository) and with `pgbackrest archive-push`
# (compress-type=zst, local repository), interleaved so both see the same cache
# state. Prints wall times, their ratio, the peak RSS of one wal-push and the
# latency of re-pushing an already archived segment. Needs: PostgreSQL server
# binaries, pgbackrest (apt-get install pgbackrest), python3.
set -euo pipefail

N=${1:-20}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }

echo "building release binaries..." >&2
(cd "$HERE" && cargo build --release --quiet --bin wal-push --bin pgcellar)

# BENCH_WORKDIR=DIR keeps the scratch cluster and its segments for the next run.
if [ -n "${BENCH_WORKDIR:-}" ]; then W=$BENCH_WORKDIR; mkdir -p "$W"; else W=$(mktemp -d /tmp/pgcellar-bench-XXXXXX); fi
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
cleanup() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
    if [ -n "${BENCH_WORKDIR:-}" ]; then rm -rf "$W"/repo-* "$W"/pgbr-*; else rm -rf "$W"; fi
}
trap cleanup EXIT

mkdir -p "$W/bin" "$W/segs" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock"
cp "$HERE/target/release/wal-push" "$HERE/target/release/pgcellar" "$W/bin/"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"

REUSE=0
[ -f "$W/pgdata/PG_VERSION" ] && REUSE=1
if [ $REUSE = 0 ]; then
"${AS[@]}" "$PGBIN/initdb" -D "$W/pgdata" -A trust -U postgres --no-sync >/dev/null
cat >> "$W/pgdata/postgresql.conf" <<EOF
port = 5432
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = 'cp %p $W/segs/%f'
max_wal_size = 4GB
EOF
fi
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -A -t -h "$W/sock" -U postgres -d postgres)
echo "generating WAL for $N segments..." >&2
[ $REUSE = 0 ] && "$PGBIN/pgbench" -h "$W/sock" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
while [ "$(ls "$W/segs" | grep -c '^[0-9A-F]\{24\}$' || true)" -lt $((N + 1)) ]; do
    "$PGBIN/pgbench" -h "$W/sock" -U postgres -n -c 2 -j 2 -t 2000 postgres >/dev/null 2>&1
    "${PSQL[@]}" -c 'SELECT pg_switch_wal()' >/dev/null
    sleep 1
done
mapfile -t SEGS < <(ls "$W/segs" | grep '^[0-9A-F]\{24\}$' | sort | head -n "$N")

# pgcellar repository
"${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-pgcellar" --server bench \
    --conninfo "host=$W/sock user=postgres" init
# pgBackRest repository
cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo-pgbackrest
compress-type=zst
log-path=$W/pgbr-log
lock-path=$W/pgbr-lock
log-level-console=warn
log-level-file=off
start-fast=y

[bench]
pg1-path=$W/pgdata
pg1-socket-path=$W/sock
pg1-port=5432
EOF
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"
"${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null

now_ns() { date +%s%N; }
t_cellar=0
t_pgbr=0
for s in "${SEGS[@]}"; do
    a=$(now_ns)
    "${AS[@]}" "$W/bin/wal-push" --repo "$W/repo-pgcellar" --server bench "$W/segs/$s"
    b=$(now_ns)
    "${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench archive-push "$W/segs/$s"
    c=$(now_ns)
    t_cellar=$((t_cellar + b - a))
    t_pgbr=$((t_pgbr + c - b))
done

# Re-push of already archived segments (PostgreSQL does this after a crash).
a=$(now_ns)
for s in "${SEGS[@]}"; do
    "${AS[@]}" "$W/bin/wal-push" --repo "$W/repo-pgcellar" --server bench "$W/segs/$s"
done
b=$(now_ns)
t_repush=$(( (b - a) / ${#SEGS[@]} ))
# Same loop with a no-op, to subtract the cost of runuser and the shell.
a=$(now_ns)
for s in "${SEGS[@]}"; do "${AS[@]}" true; done
b=$(now_ns)
t_noop=$(( (b - a) / ${#SEGS[@]} ))

# Peak memory of one wal-push of a 16 MiB segment (fresh repository).
"${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-mem" --server bench --conninfo "host=$W/sock user=postgres" init
peak_kb=$(python3 - "$W" "${SEGS[0]}" <<'EOF'
import resource, subprocess, sys
w, seg = sys.argv[1], sys.argv[2]
r = subprocess.run([w + "/bin/wal-push", "--repo", w + "/repo-mem", "--server", "bench", w + "/segs/" + seg])
assert r.returncode == 0, "wal-push failed"
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
EOF
)

bytes_cellar=$(du -sb "$W/repo-pgcellar/bench/wal" | cut -f1)
bytes_pgbr=$(du -sb "$W/repo-pgbackrest/archive" | cut -f1)
awk -v n="${#SEGS[@]}" -v c="$t_cellar" -v p="$t_pgbr" -v r="$t_repush" -v z="$t_noop" \
    -v m="$peak_kb" -v bc="$bytes_cellar" -v bp="$bytes_pgbr" 'BEGIN {
    printf "segments (16 MiB, real WAL):        %d\n", n
    printf "wal-push serial total:              %.3f s  (%.1f ms/segment)\n", c/1e9, c/1e6/n
    printf "pgbackrest archive-push total:      %.3f s  (%.1f ms/segment)\n", p/1e9, p/1e6/n
    printf "ratio wal-push / pgbackrest:        %.2fx   (target <= 0.75x)\n", c/p
    printf "re-push of archived segment:        %.1f ms/call (launcher overhead %.1f ms; net %.1f ms, target < 20 ms)\n", r/1e6, z/1e6, (r-z)/1e6
    printf "peak RSS of one wal-push:           %.1f MiB (target <= 20 MiB)\n", m/1024
    printf "archive bytes pgcellar / pgbackrest: %d / %d (%.2fx)\n", bc, bp, bc/bp
}'
