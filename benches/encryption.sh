#!/usr/bin/env bash
# Benchmark: what encryption costs (issue 14 target: at most +10% wall time), for
# pgcellar and, side by side, pgBackRest (aes-256-cbc) on the same data in one run.
#
#   bash benches/encryption.sh [SCALE]        (default 100: a ~1.5 GB data directory)
#   ROUNDS=3 SEGMENTS=20 bash benches/encryption.sh
#   PUSH_ONLY=1 ROUNDS=9 bash benches/encryption.sh 30   (only step 1, more rounds)
#
# One scratch PostgreSQL 15 cluster (16 MiB segments) archives every WAL file into
# four repositories: pgcellar plain, pgcellar encrypted (key file), pgBackRest repo1
# plain and repo2 aes-256-cbc. Then, ROUNDS times, alternating plain and encrypted:
#   1. serial wal-push of SEGMENTS real 16 MiB segments, one process per segment,
#      look-ahead off (what archive_command costs per call); also with a passphrase
#      (Argon2id, 64 MiB x 3, paid on every call). pgBackRest's archive-push is not
#      replayed: a second push of an archived segment is only its duplicate check;
#   2. a full base-backup --jobs 2 / pgbackrest backup --process-max 2;
#   3. a restore --jobs 2 / pgbackrest restore --process-max 2.
# Prints medians of wall time and of CPU time (user + sys of the command and its
# children), and encrypted/plain ratios. Needs PostgreSQL 15, pgbackrest, python3.
# Run as root (servers run as postgres) or as the cluster owner.
set -euo pipefail

SCALE=${1:-100}
ROUNDS=${ROUNDS:-3}
SEGMENTS=${SEGMENTS:-20}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    echo "building release binaries..." >&2
    (cd "$HERE" && cargo build --release --quiet --bin wal-push --bin wal-get --bin pgcellar --bin base-backup --bin restore)
    BIN=$HERE/target/release
fi

W=$(mktemp -d /tmp/pgcellar-encbench-XXXXXX)
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
PORT=${BENCH_PORT:-54331}
cleanup() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/bin" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock" "$W/segs" "$W/r"
for b in wal-push wal-get pgcellar base-backup restore; do cp "$BIN/$b" "$W/bin/"; done
"$W/bin/pgcellar" key generate "$W/repo.key" >/dev/null 2>&1
echo "correct horse battery staple" > "$W/passphrase"
chmod 600 "$W/passphrase"
cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo-pgbr
repo2-path=$W/repo-pgbr-enc
repo2-cipher-type=aes-256-cbc
repo2-cipher-pass=0123456789abcdef0123456789abcdef
compress-type=zst
process-max=2
log-path=$W/pgbr-log
lock-path=$W/pgbr-lock
log-level-console=warn
log-level-file=off
start-fast=y
archive-timeout=600
repo1-retention-full=99
repo2-retention-full=99

[bench]
pg1-path=$W/pgdata
pg1-socket-path=$W/sock
pg1-port=$PORT
EOF
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$W"

PLAIN=(--repo "$W/repo-plain" --server bench)
ENC=(--repo "$W/repo-enc" --server bench --key-file "$W/repo.key")
PASS=(--repo "$W/repo-pass" --server bench --passphrase-file "$W/passphrase")
"${AS[@]}" "$PGBIN/initdb" -D "$W/pgdata" -A trust -U postgres --no-sync >/dev/null
cat >> "$W/pgdata/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$W/bin/wal-push ${PLAIN[*]} %p && $W/bin/wal-push ${ENC[*]} %p && pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p && cp %p $W/segs/%f'
max_wal_size = 4GB
shared_buffers = 256MB
EOF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -A -t -h "$W/sock" -p "$PORT" -U postgres -d postgres)
CONN="host=$W/sock port=$PORT user=postgres"
"${AS[@]}" "$W/bin/pgcellar" "${PLAIN[@]}" --conninfo "$CONN" init 2>/dev/null
"${AS[@]}" "$W/bin/pgcellar" "${ENC[@]}" --conninfo "$CONN" init --encrypt 2>/dev/null
"${AS[@]}" "$W/bin/pgcellar" "${PASS[@]}" --conninfo "$CONN" init --encrypt 2>/dev/null
"${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
echo "loading pgbench scale $SCALE..." >&2
"$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
"${PSQL[@]}" -c "VACUUM ANALYZE"
"${PSQL[@]}" -c "CHECKPOINT"
DATA_BYTES=$(du -sb "$W/pgdata" | cut -f1)

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
settle

# The segments the serial pushes replay: real ones, copied by archive_command.
mapfile -t SEGS < <(ls "$W/segs" | grep -E '^[0-9A-F]{24}$' | sort | tail -n "$SEGMENTS")
[ "${#SEGS[@]}" -ge "$SEGMENTS" ] || { echo "only ${#SEGS[@]} segments were archived" >&2; exit 1; }
# Fresh repositories for the replays, registered to the same cluster.
for r in plain enc pass; do
    case $r in
        plain) args=(--repo "$W/push-plain" --server bench); extra=() ;;
        enc) args=(--repo "$W/push-enc" --server bench --key-file "$W/repo.key"); extra=(--encrypt) ;;
        pass) args=(--repo "$W/push-pass" --server bench --passphrase-file "$W/passphrase"); extra=(--encrypt) ;;
    esac
    "${AS[@]}" "$W/bin/pgcellar" "${args[@]}" --conninfo "$CONN" init "${extra[@]}" 2>/dev/null
done

# timed NAME COMMAND...: wall and CPU (user+sys of it and its children) in T_/C_.
declare -A T C
timed() {
    local name=$1; shift
    local out
    out=$(python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
if r.returncode != 0:
    sys.exit(f"{sys.argv[1:]} failed: {r.returncode}")
print(f"{wall:.3f} {ru.ru_utime + ru.ru_stime:.3f}")
PY
)
    T[$name]="${T[$name]:-} ${out% *}"
    C[$name]="${C[$name]:-} ${out#* }"
    echo "  $name: wall ${out% *} s, cpu ${out#* } s" >&2
}

export W
export SEGS_LIST="${SEGS[*]}"

BB=("${AS[@]}" "$W/bin/base-backup" --pgdata "$W/pgdata" --conninfo "$CONN" -q --full --jobs 2)
PGBR=("${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round of $ROUNDS" >&2
    # Each replay goes into emptied repositories (a re-push is only a hash check).
    for r in plain enc pass; do
        "${AS[@]}" find "$W/push-$r/bench/wal" -mindepth 1 -delete 2>/dev/null || true
    done
    for r in plain enc pass; do
        case $r in
            plain) args=(--repo "$W/push-plain" --server bench) ;;
            enc) args=(--repo "$W/push-enc" --server bench --key-file "$W/repo.key") ;;
            pass) args=(--repo "$W/push-pass" --server bench --passphrase-file "$W/passphrase") ;;
        esac
        timed "push_$r" "${AS[@]}" bash -c 'SEGS=($SEGS_LIST); for f in "${SEGS[@]}"; do "$W/bin/wal-push" -q "$@" --push-lookahead 0 "$W/segs/$f"; done' _ "${args[@]}"
    done
    [ -n "${PUSH_ONLY:-}" ] && continue
    settle
    timed bb_plain "${BB[@]}" "${PLAIN[@]}"
    settle
    timed bb_enc "${BB[@]}" "${ENC[@]}"
    settle
    timed pgbr_bb_plain "${PGBR[@]}" --repo=1 --type=full backup
    settle
    timed pgbr_bb_enc "${PGBR[@]}" --repo=2 --type=full backup
    for r in plain enc pgbr_plain pgbr_enc; do "${AS[@]}" rm -rf "$W/r/$r"; done
    timed restore_plain "${AS[@]}" "$W/bin/restore" "${PLAIN[@]}" -q --jobs 2 "$W/r/plain"
    timed restore_enc "${AS[@]}" "$W/bin/restore" "${ENC[@]}" -q --jobs 2 "$W/r/enc"
    timed pgbr_restore_plain "${PGBR[@]}" --repo=1 --pg1-path="$W/r/pgbr_plain" --process-max=2 restore
    timed pgbr_restore_enc "${PGBR[@]}" --repo=2 --pg1-path="$W/r/pgbr_enc" --process-max=2 restore
done
if [ -z "${PUSH_ONLY:-}" ]; then
# Both restores hold the same relation files (the two backups are separate copies of
# a live cluster, so bytes may differ; the tests check content byte for byte).
files() { (cd "$1" && find base global -type f | sort); }
[ "$(files "$W/r/plain")" = "$(files "$W/r/enc")" ] \
    || { echo "the encrypted restore holds other files than the plain one" >&2; exit 1; }
BYTES_PLAIN=$(du -sb "$W/repo-plain/bench/objects" | cut -f1)
BYTES_ENC=$(du -sb "$W/repo-enc/bench/objects" | cut -f1)
fi

python3 - <<EOF
import statistics
def med(s): return statistics.median(float(x) for x in s.split())
T = {$(for k in "${!T[@]}"; do printf '"%s": "%s", ' "$k" "${T[$k]}"; done)}
C = {$(for k in "${!C[@]}"; do printf '"%s": "%s", ' "$k" "${C[$k]}"; done)}
print()
print(f"data directory {$DATA_BYTES/1e6:.0f} MB (pgbench scale $SCALE); medians of $ROUNDS rounds; "
      f"CPU = user+sys of the command and its children")
print(f"{'step':44} {'plain':>9} {'encrypted':>10} {'ratio':>6} {'cpu plain':>10} {'cpu enc':>8} {'ratio':>6}")
def row(label, a, b):
    if a not in T or b not in T:
        return
    print(f"{label:44} {med(T[a]):>8.2f}s {med(T[b]):>9.2f}s {med(T[b])/med(T[a]):>5.2f}x "
          f"{med(C[a]):>9.2f}s {med(C[b]):>7.2f}s {med(C[b])/med(C[a]):>5.2f}x")
row("pgcellar serial wal-push x $SEGMENTS, key file", "push_plain", "push_enc")
row("pgcellar serial wal-push x $SEGMENTS, passphrase", "push_plain", "push_pass")
row("pgcellar base-backup --full --jobs 2", "bb_plain", "bb_enc")
row("pgcellar restore --jobs 2", "restore_plain", "restore_enc")
row("pgBackRest backup full, process-max 2", "pgbr_bb_plain", "pgbr_bb_enc")
row("pgBackRest restore, process-max 2", "pgbr_restore_plain", "pgbr_restore_enc")
print(f"target: encrypted/plain wall <= 1.10x for serial wal-push, backup and restore")
if "${BYTES_PLAIN:-}":
    print(f"stored objects: plain {${BYTES_PLAIN:-0}/1e6:.1f} MB, encrypted {${BYTES_ENC:-0}/1e6:.1f} MB")
for k in sorted(T):
    print(f"  samples {k}: wall {T[k].split()} cpu {C[k].split()}")
EOF
