#!/usr/bin/env bash
# Benchmark (not a test): serial wal-push of real 16 MiB segments to an SSH repository
# on loopback, beside the same to a local repository and beside an scp-per-segment
# loop (what a hand-written `archive_command = 'scp %p host:/archive/%f'` does), plus
# the per-call latency of re-pushing an already archived segment over SSH.
#
# Usage (as root, on a machine with PostgreSQL server binaries and openssh-server):
#   cargo build --release --bins && benches/ssh-wal-push.sh [SEGMENTS] [ROUNDS]
# Environment: BIN (default target/release), PG_BINDIR (default pg_config --bindir).
#
# It makes a scratch cluster (default 16 MiB segments), generates WAL with pgbench,
# copies SEGMENTS finished segments out of pg_wal, registers the cluster in each fresh
# repository with `pgcellar init`, starts a throwaway sshd (own host key, client key,
# known_hosts; login user postgres, unlocked with `usermod -p '*'` if locked), and
# times each method ROUNDS times. Everything lives in one temp dir, removed at exit.
set -euo pipefail

N=${1:-20}
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$HERE/target/release}
PG_BINDIR=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ "$(id -u)" = 0 ] || { echo "run as root (the cluster runs as postgres)" >&2; exit 2; }
for b in wal-push pgcellar; do [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release --bins" >&2; exit 2; }; done

W=$(mktemp -d /tmp/pgcellar-bench-XXXXXX)
chmod 755 "$W"
SSHD_PID=
cleanup() {
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
    runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/bin" "$W/sock" "$W/segs"
cp "$BIN/wal-push" "$BIN/pgcellar" "$W/bin/"
chown -R postgres:postgres "$W"
now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== scratch cluster, 16 MiB segments, pgbench WAL" >&2
PGPORT=$(free_port)
runuser -u postgres -- "$PG_BINDIR/initdb" -D "$W/pgdata" -A trust -U postgres --no-sync >/dev/null
cat >> "$W/pgdata/postgresql.conf" <<EOF
port = $PGPORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
max_wal_size = 8GB
checkpoint_timeout = 1h
fsync = off
EOF
runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
CONN="host=$W/sock port=$PGPORT user=postgres dbname=postgres"
psql() { "$PG_BINDIR/psql" -X -A -t -q -h "$W/sock" -p "$PGPORT" -U postgres -d postgres -c "$1"; }
while :; do
    "$PG_BINDIR/pgbench" -h "$W/sock" -p "$PGPORT" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
    CUR=$(psql "SELECT pg_walfile_name(pg_current_wal_lsn())")
    DONE=$(ls "$W/pgdata/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$CUR" '$0 < c' | wc -l)
    [ "$DONE" -ge "$N" ] && break
done
mapfile -t FINISHED < <(ls "$W/pgdata/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$CUR" '$0 < c')
for s in "${FINISHED[@]:0:$N}"; do cp "$W/pgdata/pg_wal/$s" "$W/segs/"; done
chown -R postgres:postgres "$W/segs"
SEGS=("$W"/segs/*)
cat "${SEGS[@]}" > /dev/null   # warm the page cache for every method alike
echo "   ${#SEGS[@]} segments of $(stat -c %s "${SEGS[0]}") bytes" >&2

echo "== throwaway sshd on loopback" >&2
S="$W/ssh"; mkdir -p "$S"
ssh-keygen -q -t ed25519 -N '' -f "$S/host" -C bench-host
ssh-keygen -q -t ed25519 -N '' -f "$S/client" -C bench-client
cp "$S/client.pub" "$S/authorized_keys"
SSH_PORT=$(free_port)
echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$S/host.pub")" > "$S/known_hosts"
cat > "$S/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $S/host
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
Subsystem sftp internal-sftp
EOF
chown postgres:postgres "$S/client" "$S/known_hosts" "$S/authorized_keys"
mkdir -p /run/sshd
case "$(getent shadow postgres | cut -d: -f2)" in '!'*|'') usermod -p '*' postgres ;; esac
/usr/sbin/sshd -D -e -f "$S/sshd_config" 2>"$S/sshd.log" &
SSHD_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT) 2>/dev/null && break; sleep 0.05; done
SSH_FLAGS=(--ssh-identity "$S/client" --ssh-known-hosts "$S/known_hosts")

# Repositories are created fresh for every round so each push really stores.
fresh_repo() { # $1 = local dir or ssh URL
    runuser -u postgres -- "$W/bin/pgcellar" --repo "$1" --server bench "${SSH_FLAGS[@]}" --conninfo "$CONN" -q init
}
time_push() { # $1 = repo URL; prints seconds
    local t0 t1
    t0=$(now)
    for s in "${SEGS[@]}"; do "$W/bin/wal-push" --repo "$1" --server bench "${SSH_FLAGS[@]}" "$s"; done
    t1=$(now)
    echo "$t1 - $t0" | bc
}
time_scp() { # $1 = remote dir
    local t0 t1
    t0=$(now)
    for s in "${SEGS[@]}"; do
        scp -q -i "$S/client" -o UserKnownHostsFile="$S/known_hosts" -o StrictHostKeyChecking=yes \
            -o BatchMode=yes -P "$SSH_PORT" "$s" "postgres@127.0.0.1:$1/$(basename "$s")"
    done
    t1=$(now)
    echo "$t1 - $t0" | bc
}

printf '%-6s %10s %10s %10s %12s %12s\n' round local_s ssh_s scp_s ssh/local ssh/scp
for r in $(seq "$ROUNDS"); do
    L="$W/local-$r"; R="ssh://postgres@127.0.0.1:$SSH_PORT$W/remote-$r"; D="$W/scp-$r"
    fresh_repo "$L"; fresh_repo "$R"
    runuser -u postgres -- mkdir -p "$D"
    tl=$(time_push "$L"); ts=$(time_push "$R"); tc=$(time_scp "$D")
    printf '%-6s %10.2f %10.2f %10.2f %12.2f %12.2f\n' "$r" "$tl" "$ts" "$tc" \
        "$(echo "$ts / $tl" | bc -l)" "$(echo "$ts / $tc" | bc -l)"
done

echo
echo "re-push of an archived segment (identical content; exit 0 without storing), 20 calls:"
for target in local ssh; do
    if [ $target = local ]; then U="$W/local-1"; else U="ssh://postgres@127.0.0.1:$SSH_PORT$W/remote-1"; fi
    ms=()
    for _ in $(seq 20); do
        t0=$(now); "$W/bin/wal-push" --repo "$U" --server bench "${SSH_FLAGS[@]}" "${SEGS[0]}"; t1=$(now)
        ms+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
    done
    printf '%s\n' "${ms[@]}" | sort -n | awk -v t=$target '{a[NR]=$1; s+=$1} END {printf "  %-5s median %.1f ms  min %.1f ms  max %.1f ms  mean %.1f ms\n", t, a[int((NR+1)/2)], a[1], a[NR], s/NR}'
done
