#!/usr/bin/env bash
# Benchmarks of look-ahead wal-push and prefetching wal-get (issue 6). Not tests:
# each prints the figures it measured in this run.
#
#   bash benches/lookahead.sh push [SEGMENTS]   # (a) serial push of a .ready backlog (ROUNDS=3)
#   bash benches/lookahead.sh load [SECONDS]    # (b) write-heavy pgbench, .ready backlog over time
#   bash benches/lookahead.sh recovery [MB]     # (c) recovery of ~MB of WAL through wal-get
#
# (a) Collects SEGMENTS real 16 MiB segments (default 20), lays them out as a data
#     directory would (pg_wal/NAME + archive_status/NAME.ready) and calls, serially
#     and in archiver order, `wal-push pg_wal/NAME` with look-ahead (defaults, and
#     --push-parallel 8), `wal-push --push-lookahead 0`, `pgbackrest archive-push`
#     (zst, synchronous, local repository) and, with a throwaway sshd, wal-push to
#     an SSH repository on loopback; each into a fresh repository, ROUNDS times
#     (default 3). Prints medians, the median of per-round ratios to pgbackrest,
#     CPU seconds (user+sys, independent of other load) and every round's figures.
#     Every .ready is present from the start: the backlog case look-ahead is for.
# (b) Runs `pgbench -n -f insert-1MB.sql -c 2 -j 2 -T SECONDS` (default 60) on a
#     16 MiB-segment cluster once per archive_command: wal-push, pgbackrest
#     archive-push, and an scp to localhost (only when sshd is already reachable
#     on 127.0.0.1:22 with key login for postgres; otherwise it says so), sampling
#     the number of .ready files every 5 s.
# (c) Archives a base backup plus ~MB (default 1024) of WAL into both repositories,
#     then times recovery of a copy (start to promotion) with wal-get
#     --prefetch 0, wal-get with prefetch (default 8), and pgbackrest archive-get.
#
# Needs PostgreSQL 15 server binaries, pgbackrest, runs as root (servers run as
# postgres) or as a normal user. BENCH_WORKDIR=DIR keeps scratch data in DIR.
set -euo pipefail

MODE=${1:-push}
ARG=${2:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }

echo "building release binaries..." >&2
(cd "$HERE" && cargo build --release --quiet --bin wal-push --bin wal-get --bin pgcellar)

if [ -n "${BENCH_WORKDIR:-}" ]; then W=$BENCH_WORKDIR; mkdir -p "$W"; else W=$(mktemp -d /tmp/pgcellar-la-bench-XXXXXX); fi
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
PORT=$((20000 + RANDOM % 20000))
stop_all() {
    for d in "$W"/pg-*; do
        [ -f "$d/PG_VERSION" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
}
cleanup() {
    stop_all
    [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null || true
    [ -n "${BENCH_WORKDIR:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/bin" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock"
cp "$HERE/target/release/wal-push" "$HERE/target/release/wal-get" "$HERE/target/release/pgcellar" "$W/bin/"
own() { [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$@" || true; }
own "$W"
now_ns() { date +%s%N; }
PSQL() { "$PGBIN/psql" -X -q -A -t -h "$W/sock" -p "$PORT" -U postgres -d postgres "$@"; }

# new_cluster DIR ARCHIVE_COMMAND: initdb (16 MiB segments) and start.
new_cluster() {
    local d=$1 cmd=$2
    "${AS[@]}" "$PGBIN/initdb" -D "$d" -A trust -U postgres --no-sync >/dev/null
    cat >> "$d/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$cmd'
max_wal_size = 4GB
checkpoint_timeout = 30min
shared_buffers = 128MB
synchronous_commit = off
EOF
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$d" -l "$d.log" -w start >/dev/null
}
stop_cluster() { "${AS[@]}" "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true; }

# pgbackrest_conf STANZA_DIR DATA: write $W/pgbackrest.conf for stanza "bench".
pgbackrest_conf() {
    cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo-pgbackrest
compress-type=zst
log-path=$W/pgbr-log
lock-path=$W/pgbr-lock
log-level-console=warn
log-level-file=off
start-fast=y
archive-check=n

[bench]
pg1-path=$1
pg1-socket-path=$W/sock
pg1-port=$PORT
EOF
    own "$W/pgbackrest.conf"
}
PGBR=(pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
# start_sshd: a throwaway sshd on a loopback port (root only), login user postgres.
# Sets SSH_PORT, SSH_FLAGS and SCP_OPTS; SSH_PORT stays empty when it cannot run.
SSH_PORT=""; SSH_FLAGS=(); SCP_OPTS=""; SSHD_PID=""
start_sshd() {
    [ "$(id -u)" = 0 ] && [ -x /usr/sbin/sshd ] || { echo "no sshd (needs root and openssh-server): SSH variants skipped" >&2; return 0; }
    local S="$W/ssh"; mkdir -p "$S"
    ssh-keygen -q -t ed25519 -N '' -f "$S/host" -C bench-host
    ssh-keygen -q -t ed25519 -N '' -f "$S/client" -C bench-client
    cp "$S/client.pub" "$S/authorized_keys"
    SSH_PORT=$((40000 + RANDOM % 20000))
    echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$S/host.pub")" > "$S/known_hosts"
    printf '%s\n' "Port $SSH_PORT" "ListenAddress 127.0.0.1" "HostKey $S/host" "PidFile $S/sshd.pid" \
        "AuthorizedKeysFile $S/authorized_keys" "PasswordAuthentication no" \
        "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" "MaxStartups 100" \
        "Subsystem sftp internal-sftp" > "$S/sshd_config"
    chown postgres:postgres "$S/client" "$S/known_hosts" "$S/authorized_keys"
    mkdir -p /run/sshd
    case "$(getent shadow postgres | cut -d: -f2)" in '!'*|'') usermod -p '*' postgres ;; esac
    /usr/sbin/sshd -D -e -f "$S/sshd_config" 2>"$S/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT) 2>/dev/null && break; sleep 0.05; done
    SSH_FLAGS=(--ssh-identity "$S/client" --ssh-known-hosts "$S/known_hosts")
    SCP_OPTS="-q -i $S/client -o UserKnownHostsFile=$S/known_hosts -o StrictHostKeyChecking=yes -P $SSH_PORT"
}
ssh_url() { echo "ssh://postgres@127.0.0.1:$SSH_PORT$1"; }

ready_count() { ls "$1/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true; }

bench_push() {
    local n=${ARG:-20} rounds=${ROUNDS:-3}
    mkdir -p "$W/segs"; own "$W/segs"
    new_cluster "$W/pg-src" "cp %p $W/segs/%f"
    echo "generating WAL for $n segments..." >&2
    "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
    while [ "$(ls "$W/segs" | grep -c '^[0-9A-F]\{24\}$' || true)" -lt $((n + 1)) ]; do
        "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -c 2 -j 2 -t 2000 postgres >/dev/null 2>&1
        PSQL -c 'SELECT pg_switch_wal()' >/dev/null
        sleep 1
    done
    mapfile -t SEGS < <(ls "$W/segs" | grep '^[0-9A-F]\{24\}$' | sort | head -n "$n")
    pgbackrest_conf "$W/pg-src"
    start_sshd
    local variants=(la la8 plain pgbr pgbr-gz)
    [ -n "$SSH_PORT" ] && variants+=(ssh-la ssh-la8 ssh-plain)
    # One shell as postgres runs each serial loop, so runuser is not in the timing.
    # Prints "wall_ns cpu_s" (CPU: user+sys of all children, independent of other load).
    run_loop() { # DIR COMMAND-PREFIX...
        "${AS[@]}" bash -c '
            cd "$1/data"; shift; t0=$(date +%s%N)
            for f in $(ls pg_wal/archive_status | sed -n "s/\.ready$//p" | sort); do
                "$@" "$PWD/pg_wal/$f" || { echo "push of $f failed" >&2; exit 1; }
                mv "pg_wal/archive_status/$f.ready" "pg_wal/archive_status/$f.done"
            done
            wall=$(( $(date +%s%N) - t0 ))
            times > ../times; cpu=$(tail -1 ../times | awk "{ split(\$1,a,\"m\"); split(\$2,b,\"m\"); print a[1]*60+a[2]+b[1]*60+b[2] }")
            echo "$wall $cpu"' _ "$@"
    }
    : > "$W/push-results"
    for r in $(seq "$rounds"); do
        echo "round $r/$rounds: pushing ${#SEGS[@]} segments serially per variant..." >&2
        rm -rf "$W/repo-pgbackrest"; "${AS[@]}" "${PGBR[@]}" stanza-create >/dev/null
        for v in "${variants[@]}"; do
            local dd="$W/dd-$v-$r" u="$W/repo-$v-$r" cmd=()
            mkdir -p "$dd/data/pg_wal/archive_status"
            for s in "${SEGS[@]}"; do
                cp "$W/segs/$s" "$dd/data/pg_wal/$s"
                : > "$dd/data/pg_wal/archive_status/$s.ready"
            done
            case $v in ssh-*) u=$(ssh_url "$u") ;; esac
            own "$dd"
            "${AS[@]}" "$W/bin/pgcellar" --repo "$u" "${SSH_FLAGS[@]}" --server bench --conninfo "host=$W/sock port=$PORT user=postgres" -q init >/dev/null
            case $v in
                la|ssh-la) cmd=("$W/bin/wal-push" "${SSH_FLAGS[@]}" --repo "$u" --server bench) ;;
                la8|ssh-la8) cmd=("$W/bin/wal-push" --push-parallel 8 "${SSH_FLAGS[@]}" --repo "$u" --server bench) ;;
                plain|ssh-plain) cmd=("$W/bin/wal-push" --push-lookahead 0 "${SSH_FLAGS[@]}" --repo "$u" --server bench) ;;
                pgbr) cmd=("${PGBR[@]}" archive-push) ;;
                # pgBackRest as installed: its default compression (gz, level 6).
                pgbr-gz) cmd=("${PGBR[@]}" --compress-type=gz archive-push) ;;
            esac
            # Each pgBackRest variant starts from an empty archive too.
            [ $v = pgbr-gz ] && { rm -rf "$W/repo-pgbackrest"; "${AS[@]}" "${PGBR[@]}" stanza-create >/dev/null; }
            sync
            read -r wall cpu < <(run_loop "$dd" "${cmd[@]}")
            local stored=""
            case $v in pgbr*) ;; *) stored=$(find "$W/repo-$v-$r/bench/wal" -type f -name '[0-9A-F]*-*' | wc -l) ;; esac
            echo "$r $v $wall $cpu $stored" >> "$W/push-results"
            rm -rf "$dd"
        done
    done
    echo "segments: ${#SEGS[@]} x 16 MiB real WAL, all .ready   cores: $(nproc)   rounds: $rounds   load average at end: $(cut -d' ' -f1 /proc/loadavg)"
    echo "defaults: push_lookahead 16, push_parallel $(nproc | awk '{ n=$1; if (n<2) n=2; if (n>8) n=8; print n }'); zstd level 3 for both tools"
    # Median per variant; ratios to pgbackrest computed within each round (same load), then median.
    awk -v n="${#SEGS[@]}" '
        { w[$2, $1] = $3; c[$2, $1] = $4; s[$2, $1] = $5; if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 } rounds[$1] = 1 }
        function median(arr, m,   i, j, t) { for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t } return (m % 2) ? arr[(m + 1) / 2] : (arr[m / 2] + arr[m / 2 + 1]) / 2 }
        END {
            m = 0; for (r in rounds) m++
            names["la"] = "wal-push, look-ahead (defaults)"; names["la8"] = "wal-push, look-ahead, --push-parallel 8"
            names["plain"] = "wal-push --push-lookahead 0"; names["pgbr"] = "pgbackrest archive-push (sync)"; names["pgbr-gz"] = "pgbackrest archive-push (sync, default gz)"
            names["ssh-la"] = "SSH wal-push, look-ahead (defaults)"; names["ssh-la8"] = "SSH wal-push, look-ahead, parallel 8"
            names["ssh-plain"] = "SSH wal-push --push-lookahead 0"
            for (i = 1; i <= k; i++) {
                v = order[i]; delete a; delete b; delete q
                for (r = 1; r <= m; r++) { a[r] = w[v, r]; b[r] = c[v, r]; q[r] = w[v, r] / w["pgbr", r] }
                printf "%-42s median %7.3f s (%6.1f ms/segment)  CPU %5.2f s  x pgbackrest %.2f", names[v], median(a, m) / 1e9, median(a, m) / 1e6 / n, median(b, m), median(q, m)
                printf "  stored/round: %s\n", (s[v, 1] == "" ? "-" : s[v, 1])
            }
            printf "targets: local look-ahead <= 0.40x pgbackrest; SSH look-ahead <= 0.50x\n"
            printf "per-round wall seconds:"
            for (r = 1; r <= m; r++) { printf "  [%d]", r; for (i = 1; i <= k; i++) printf " %s=%.2f", order[i], w[order[i], r] / 1e9 }
            printf "\n"
        }' "$W/push-results"
}

bench_load() {
    local secs=${ARG:-60}
    # ~1 MB of random text per transaction (md5 is hex: incompressible-ish like real data).
    cat > "$W/insert-1MB.sql" <<'EOF'
INSERT INTO big SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768);
EOF
    own "$W/insert-1MB.sql"
    start_sshd
    local variants=(wal-push pgbackrest)
    [ -n "$SSH_PORT" ] && variants+=(wal-push-ssh scp)
    for v in "${variants[@]}"; do
        local d="$W/pg-load-$v" cmd
        rm -rf "$W/repo-pgbackrest" "$W/repo-load"
        mkdir -p "$W/scp-dest"; own "$W/scp-dest"
        case $v in
            wal-push) cmd="$W/bin/wal-push --repo $W/repo-load --server bench %p" ;;
            pgbackrest) cmd="pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p" ;;
            wal-push-ssh) cmd="$W/bin/wal-push ${SSH_FLAGS[*]} --repo $(ssh_url "$W/repo-load") --server bench %p" ;;
            scp) cmd="scp $SCP_OPTS %p postgres@127.0.0.1:$W/scp-dest/%f" ;;
        esac
        # Start with archiving to nowhere until the repository is registered.
        new_cluster "$d" "$cmd"
        case $v in wal-push*)
            "${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-load" --server bench --conninfo "host=$W/sock port=$PORT user=postgres" init >/dev/null ;;
        esac
        if [ $v = pgbackrest ]; then pgbackrest_conf "$d"; "${AS[@]}" "${PGBR[@]}" stanza-create >/dev/null; fi
        PSQL -c "CREATE TABLE big (t text)"
        PSQL -c "SELECT pg_switch_wal()" >/dev/null
        sleep 2
        echo "== $v: pgbench -n -f insert-1MB.sql -c 2 -j 2 -T $secs" >&2
        local a0; a0=$(PSQL -c "SELECT archived_count FROM pg_stat_archiver")
        local lsn0; lsn0=$(PSQL -c "SELECT pg_current_wal_lsn()")
        "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -f "$W/insert-1MB.sql" -c 2 -j 2 -T "$secs" postgres > "$W/pgbench-$v.out" 2>&1 &
        local pb=$! t=0 series=""
        while kill -0 $pb 2>/dev/null; do
            sleep 5; t=$((t + 5))
            series="$series ${t}s:$(ready_count "$d")"
        done
        wait $pb || true
        local end_ready; end_ready=$(ready_count "$d")
        local mb; mb=$(PSQL -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576)")
        local tps; tps=$(grep -o 'tps = [0-9.]*' "$W/pgbench-$v.out" | head -1)
        local st; st=$(PSQL -c "SELECT archived_count - $a0, failed_count FROM pg_stat_archiver")
        # How long the backlog takes to drain after the load stops.
        local t1; t1=$(now_ns)
        while [ "$(ready_count "$d")" -gt 0 ] && [ $(( ($(now_ns) - t1) / 1000000000 )) -lt 300 ]; do sleep 0.5; done
        local drain; drain=$(( ($(now_ns) - t1) / 1000000 ))
        printf '%-10s WAL %s MB in %ss (%s) | .ready every 5s:%s | at end: %s | archived,failed: %s | drained in %.1f s\n' \
            "$v" "$mb" "$secs" "$tps" "$series" "$end_ready" "$st" "$(awk -v x="$drain" 'BEGIN{print x/1000}')"
        stop_cluster "$d"
        rm -rf "$d"
    done
    [ -n "$SSH_PORT" ] || echo "wal-push over SSH and scp: skipped (no sshd)"
}

bench_recovery() {
    local mb=${ARG:-1024}
    local src="$W/pg-rsrc"
    rm -rf "$W/repo-pgbackrest" "$W/repo-rec" "$W/plain-wal"
    mkdir -p "$W/repo-rec" "$W/plain-wal"; own "$W/repo-rec" "$W/plain-wal"
    # Archive into both repositories from one cluster, plus a plain copy: recovery
    # through `cp` from it is the floor (replay alone, no fetching worth the name).
    new_cluster "$src" "$W/bin/wal-push --repo $W/repo-rec --server bench %p && pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p && cp %p $W/plain-wal/%f"
    pgbackrest_conf "$src"
    "${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-rec" --server bench --conninfo "host=$W/sock port=$PORT user=postgres" init >/dev/null
    "${AS[@]}" "${PGBR[@]}" stanza-create >/dev/null
    PSQL -c "CREATE TABLE big (t text)"
    "${AS[@]}" "$PGBIN/pg_basebackup" -h "$W/sock" -p "$PORT" -U postgres -X none -c fast --no-sync -D "$W/base" >/dev/null
    echo "generating ~$mb MB of WAL..." >&2
    local lsn0; lsn0=$(PSQL -c "SELECT pg_current_wal_lsn()")
    while [ "$(PSQL -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') > $mb::bigint * 1048576")" = f ]; do
        PSQL -c "INSERT INTO big SELECT (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768)) FROM generate_series(1, 50)"
    done
    PSQL -c "INSERT INTO big VALUES ('last row')"
    local last; last=$(PSQL -c "SELECT pg_walfile_name(pg_switch_wal())")
    while [ "$(PSQL -c "SELECT coalesce(last_archived_wal, '') >= '$last'  FROM pg_stat_archiver")" != t ]; do sleep 1; done
    local rows; rows=$(PSQL -c "SELECT count(*) FROM big")
    local wal_mb; wal_mb=$(PSQL -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576)")
    stop_cluster "$src"
    start_sshd
    local variants=(cp-floor wal-get-noprefetch wal-get-prefetch pgbackrest)
    [ -n "$SSH_PORT" ] && variants+=(ssh-wal-get-noprefetch ssh-wal-get-prefetch)
    for v in "${variants[@]}"; do
        local d="$W/pg-rec-$v" cmd
        rm -rf "$d" "$d.pgcellar-spool"
        cp -a "$W/base" "$d"
        case $v in
            cp-floor) cmd="cp $W/plain-wal/%f %p" ;;
            wal-get-noprefetch) cmd="$W/bin/wal-get --prefetch 0 --repo $W/repo-rec --server bench %f %p" ;;
            wal-get-prefetch) cmd="$W/bin/wal-get --repo $W/repo-rec --server bench %f %p" ;;
            pgbackrest) cmd="pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-get %f \"%p\"" ;;
            ssh-wal-get-noprefetch) cmd="$W/bin/wal-get --prefetch 0 ${SSH_FLAGS[*]} --repo $(ssh_url "$W/repo-rec") --server bench %f %p" ;;
            ssh-wal-get-prefetch) cmd="$W/bin/wal-get ${SSH_FLAGS[*]} --repo $(ssh_url "$W/repo-rec") --server bench %f %p" ;;
        esac
        cat >> "$d/postgresql.conf" <<EOF
archive_mode = off
restore_command = '$cmd'
EOF
        : > "$d/recovery.signal"
        # pgbackrest insists that pg1-path is the directory it restores into.
        [ $v = pgbackrest ] && pgbackrest_conf "$d"
        own "$d"
        sync
        local t0; t0=$(now_ns)
        "${AS[@]}" "$PGBIN/pg_ctl" -D "$d" -l "$d.log" start >/dev/null
        until [ "$(PSQL -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.1; done
        local ms=$(( ($(now_ns) - t0) / 1000000 ))
        local got; got=$(PSQL -c "SELECT count(*) FROM big")
        printf '%-20s recovered %s MB of WAL in %6.2f s (%.0f MB/s); rows %s/%s\n' "$v" "$wal_mb" "$(awk -v x="$ms" 'BEGIN{print x/1000}')" "$(awk -v m="$wal_mb" -v x="$ms" 'BEGIN{print m*1000/x}')" "$got" "$rows"
        stop_cluster "$d"
        rm -rf "$d" "$d.pgcellar-spool"
    done
}

case $MODE in
    push) bench_push ;;
    load) bench_load ;;
    recovery) bench_recovery ;;
    *) echo "usage: $0 push [SEGMENTS] | load [SECONDS] | recovery [MB]" >&2; exit 2 ;;
esac
