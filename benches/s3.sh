#!/usr/bin/env bash
# Benchmarks of pgcellar on an S3 object store (Garage, single node on loopback)
# beside the same on a local repository, and beside pgBackRest on both. Not tests:
# each mode prints the figures it measured in this run.
#
#   bash benches/s3.sh push [SEGMENTS]   # (1) serial push of a .ready backlog (ROUNDS=3)
#   bash benches/s3.sh load [SECONDS]    # (2) write-heavy pgbench, archive_command to S3
#   bash benches/s3.sh backup [GB]       # (3) base-backup and restore, local vs S3, --jobs 1 and 4
#
# (1) Collects SEGMENTS real 16 MiB segments (default 20) from a scratch cluster,
#     lays them out as a data directory would (pg_wal/NAME + archive_status/NAME.ready)
#     and calls, serially and in archiver order, per variant into a fresh repository
#     each round, ROUNDS times (default 3):
#       local-la     wal-push, local repository, look-ahead (defaults)
#       s3-la        wal-push, s3://pgc/..., plain HTTP, look-ahead (defaults)
#       local-plain  wal-push --push-lookahead 0, local repository
#       s3-plain     wal-push --push-lookahead 0, S3
#       s3tls-la     wal-push, S3 through the TLS proxy below (https; the bench CA in
#                    SSL_CERT_FILE): how much of pgBackRest's S3 cost is TLS
#       pgbr-local   pgbackrest archive-push (zst, synchronous), local repository
#       pgbr-s3      pgbackrest archive-push (zst, synchronous), S3 through the TLS proxy
#     Prints medians of wall time, of the client's CPU (user+sys of the pushing
#     processes) and of the Garage server's (and the proxy's) CPU during the variant,
#     the median of per-round ratios S3/local (issue target: S3 <= 1.5x local) and
#     every round's figures. The first and the last segment are fetched back and
#     compared after each variant (outside the timing).
# (2) Runs `pgbench -n -f insert-1MB.sql -c 2 -j 2 -T SECONDS` (default 60) on a
#     16 MiB-segment cluster once per archive_command: wal-push to S3 (look-ahead on,
#     settings in a --config file, as a real archive_command would have them), wal-push
#     to a local repository, and pgbackrest archive-push to S3 (or locally without the
#     proxy), sampling the number of .ready files every 5 s. Prints each series, its
#     maximum (target for S3: <= 1 segment), archived/failed counts and the time the
#     backlog took to drain.
# (3) Loads pgbench -i -s (GB * 1000 / 15) (default 1.5 GB: scale 100), vacuums and
#     checkpoints it, then takes full backups: base-backup --jobs 1 and --jobs 4 into a
#     local repository and into S3 (one fresh repository per variant, so no backup
#     shares objects with another) and pgbackrest --type=full --process-max 1 and 4
#     into a local and an S3 repository; then restores each into an empty directory
#     with the same jobs. Every step runs under `/usr/bin/time -f '%e %M'` after a
#     checkpoint and an idle archiver. Prints wall times, ratios S3/local (target
#     <= 1.3x), pgcellar/pgbackrest, peak RSS against 64 MiB + 8 MiB per job (for
#     pgbackrest: the largest of its processes, not their sum) and Garage's CPU.
#     ROUNDS=N (default 1 in this mode) repeats every backup and restore N times, into
#     fresh repositories, and prints medians, median per-round ratios and every
#     round's figures. Finally starts the last S3 --jobs 4 copy (recovery through
#     wal-get from S3) and counts pgbench_accounts (VERIFY=0 skips this).
#
# Garage: GARAGE_BIN, or the cache of .ci/install-garage (which is run when it is
# missing: about 10 minutes on 2 cores). One node, replication_factor 1, lmdb,
# loopback only, its own throwaway key and buckets. By Garage's defaults
# (data_fsync = false, metadata_fsync = false) an acknowledged PUT is not yet on disk,
# while a local pgcellar repository fsyncs every file: GARAGE_FSYNC=1 sets both to
# true. Garage runs on the same 2 cores as the client, so S3 variants pay for the
# server's CPU too (printed separately).
#
# pgBackRest 2.45's S3 driver speaks HTTPS only and Garage serves plain HTTP, so
# pgBackRest reaches Garage through stunnel4 on loopback (self-signed certificate,
# repo-storage-verify-tls=n, path-style URIs): its S3 figures include TLS
# encryption and one more local hop, pgcellar's s3-* figures do not (s3tls-la does).
# Without stunnel4 (apt-get install stunnel4), pgBackRest runs on a local repository
# only, and the script says so.
#
# Environment: BIN=DIR (prebuilt wal-push, wal-get, pgcellar, base-backup, restore;
# default: cargo build --release in this checkout), PG_BINDIR, ROUNDS, GARAGE_BIN,
# GARAGE_FSYNC, VERIFY, BENCH_WORKDIR=DIR (scratch data there, kept at exit).
# Needs PostgreSQL 15 server binaries, pgbackrest, python3, openssl, /usr/bin/time
# (apt-get install time). Runs as root (servers and clients run as postgres; Garage
# and stunnel as root) or as a normal user.
set -euo pipefail

MODE=${1:-push}
ARG=${2:-}
case $MODE in push|load|backup) ;; *) echo "usage: $0 push [SEGMENTS] | load [SECONDS] | backup [GB]" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
# The AWS_* and PGCELLAR_* variables would override the flags' and files' settings.
for v in $(compgen -e | grep -E '^(AWS_|PGCELLAR_)' || true); do unset "$v"; done

if [ -z "${BIN:-}" ]; then
    echo "building release binaries..." >&2
    (cd "$HERE" && cargo build --release --locked --quiet --bin wal-push --bin wal-get --bin pgcellar --bin base-backup --bin restore)
    BIN=$HERE/target/release
fi
for b in wal-push wal-get pgcellar base-backup restore; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (cargo build --release --bins)" >&2; exit 2; }
done
GARAGE=${GARAGE_BIN:-/var/cache/pgcellar/garage/2.5.0/bin/garage}
if ! "$GARAGE" --version >/dev/null 2>&1; then
    [ -z "${GARAGE_BIN:-}" ] || { echo "GARAGE_BIN=$GARAGE does not run" >&2; exit 2; }
    echo "no Garage binary yet: bash .ci/install-garage (cached for the next run)..." >&2
    GARAGE=$(bash "$HERE/.ci/install-garage" | tail -1)
fi

if [ -n "${BENCH_WORKDIR:-}" ]; then W=$BENCH_WORKDIR; mkdir -p "$W"; else W=$(mktemp -d /tmp/pgcellar-s3-bench-XXXXXX); fi
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
GARAGE_PID=""; STUNNEL_PID=""
stop_all() {
    for d in "$W"/pg-* "$W"/r-*/data; do
        [ -f "$d/PG_VERSION" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
}
cleanup() {
    stop_all
    [ -n "$STUNNEL_PID" ] && kill "$STUNNEL_PID" 2>/dev/null || true
    [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
    [ -n "$GARAGE_PID" ] && wait "$GARAGE_PID" 2>/dev/null || true
    [ -n "${BENCH_WORKDIR:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
trap "exit 143" TERM INT HUP   # so that the EXIT trap runs on a signal too

mkdir -p "$W/bin" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock"
for b in wal-push wal-get pgcellar base-backup restore; do cp "$BIN/$b" "$W/bin/"; done
own() { [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$@" || true; }
own "$W"
now_ns() { date +%s%N; }
CONN="host=$W/sock port=$PORT user=postgres"
PSQL() { "$PGBIN/psql" -X -q -A -t -h "$W/sock" -p "$PORT" -U postgres -d postgres "$@"; }
# CPU seconds (user+sys) a process has used so far; 0 when there is none.
proc_cpu() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

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

# --- Garage: one node on loopback, key "bench", buckets pgc (pgcellar) and pgbr ---
G() { "$GARAGE" -c "$W/garage/garage.toml" "$@"; }
start_garage() {
    local g=$W/garage i id info
    mkdir -p "$g/meta" "$g/data"
    local rpc_port; rpc_port=$(free_port)
    S3_PORT=$(free_port)
    {
        printf 'metadata_dir = "%s"\ndata_dir = "%s"\ndb_engine = "lmdb"\nreplication_factor = 1\n' "$g/meta" "$g/data"
        printf 'rpc_bind_addr = "127.0.0.1:%s"\nrpc_public_addr = "127.0.0.1:%s"\nrpc_secret = "%s"\n' "$rpc_port" "$rpc_port" "$(openssl rand -hex 32)"
        [ "${GARAGE_FSYNC:-0}" = 1 ] && printf 'data_fsync = true\nmetadata_fsync = true\n'
        printf '[s3_api]\ns3_region = "garage"\napi_bind_addr = "127.0.0.1:%s"\nroot_domain = ".s3.garage.localhost"\n' "$S3_PORT"
    } > "$g/garage.toml"
    chmod 600 "$g/garage.toml"
    # Not through G: a function in the background is a subshell, and $! must be Garage.
    "$GARAGE" -c "$g/garage.toml" server > "$g/server.log" 2>&1 &
    GARAGE_PID=$!
    for i in $(seq 300); do G status >/dev/null 2>&1 && break; sleep 0.1; done
    G status >/dev/null 2>&1 || { echo "garage did not start:" >&2; tail -20 "$g/server.log" >&2; exit 1; }
    id=$(G node id -q 2>/dev/null | tail -1 | cut -d@ -f1)
    G layout assign -z dc1 -c 1G "$id" >/dev/null
    G layout apply --version 1 >/dev/null
    G key create bench >/dev/null
    info=$(G key info bench --show-secret)
    S3_KEY=$(awk -F': *' '/Key ID:/ { print $2; exit }' <<<"$info" | tr -d ' ')
    S3_SECRET=$(awk -F': *' '/Secret key:/ { print $2; exit }' <<<"$info" | tr -d ' ')
    [ -n "$S3_KEY" ] && [ -n "$S3_SECRET" ] || { echo "could not parse 'garage key info':" >&2; echo "$info" | sed 's/Secret key:.*/Secret key: (hidden)/' >&2; exit 1; }
    for b in pgc pgbr; do
        for i in $(seq 50); do G bucket create "$b" >/dev/null 2>&1 && break; sleep 0.2; done
        G bucket allow --read --write --owner "$b" --key bench >/dev/null
    done
    for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break; sleep 0.05; done
    ( umask 077; printf '%s' "$S3_SECRET" > "$W/s3-secret" ); own "$W/s3-secret"
    S3_ENDPOINT=http://127.0.0.1:$S3_PORT
    S3_FLAGS=(--s3-endpoint "$S3_ENDPOINT" --s3-region garage --s3-allow-http true
        --s3-access-key-id "$S3_KEY" --s3-secret-access-key-file "$W/s3-secret")
    echo "garage $("$GARAGE" --version 2>&1 | head -1 | awk '{sub(/^cargo:/, "", $2); print $2}') on 127.0.0.1:$S3_PORT (fsync: ${GARAGE_FSYNC:-0})" >&2
}
# s3_toml FILE URL [ENDPOINT]: a config file for archive_command and restore_command.
s3_toml() {
    cat > "$1" <<EOF
repo = "$2"
server = "bench"
s3_endpoint = "${3:-$S3_ENDPOINT}"
s3_region = "garage"
s3_allow_http = true
s3_access_key_id = "$S3_KEY"
s3_secret_access_key_file = "$W/s3-secret"
EOF
    own "$1"
}

# --- TLS proxy for pgBackRest: stunnel4 on loopback in front of Garage ---
TLS_PORT=""
start_tls() {
    command -v stunnel4 >/dev/null || { echo "no stunnel4 (apt-get install stunnel4): pgBackRest on a local repository only" >&2; return 0; }
    local t=$W/tls i
    mkdir -p "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pgcellar-bench-ca \
        -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$t/key.pem" -out "$t/req.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$t/ext"
    openssl x509 -req -in "$t/req.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
        -extfile "$t/ext" -out "$t/cert.pem" 2>/dev/null
    chmod 644 "$t/ca.pem"
    TLS_PORT=$(free_port)
    printf 'foreground = yes\npid =\ndebug = 4\n[s3]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
        "$TLS_PORT" "$S3_PORT" "$t/cert.pem" "$t/key.pem" > "$t/stunnel.conf"
    stunnel4 "$t/stunnel.conf" > "$t/stunnel.log" 2>&1 &
    STUNNEL_PID=$!
    for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null && break; sleep 0.05; done
    (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null || { echo "stunnel did not start: pgBackRest on a local repository only" >&2; cat "$t/stunnel.log" >&2; TLS_PORT=""; }
    [ -n "$TLS_PORT" ] && echo "stunnel $(stunnel4 -version 2>&1 | awk '/^stunnel/ {print $2; exit}') https://127.0.0.1:$TLS_PORT -> Garage" >&2
    return 0
}

# pgbr_conf FILE PG1_PATH REPO...: REPO is local:DIR or s3:PATH (bucket pgbr, through
# stunnel); repositories are numbered in order. PGBR_EXTRA: more [global] lines.
pgbr_conf() {
    local f=$1 data=$2 i=0 r; shift 2
    {
        echo "[global]"
        for r in "$@"; do
            i=$((i + 1))
            case $r in
                local:*) echo "repo$i-path=${r#local:}" ;;
                s3:*) printf '%s\n' "repo$i-type=s3" "repo$i-path=${r#s3:}" "repo$i-s3-bucket=pgbr" \
                        "repo$i-s3-endpoint=127.0.0.1" "repo$i-storage-port=$TLS_PORT" "repo$i-storage-verify-tls=n" \
                        "repo$i-s3-uri-style=path" "repo$i-s3-region=garage" "repo$i-s3-key=$S3_KEY" \
                        "repo$i-s3-key-secret=$S3_SECRET" ;;
            esac
            echo "repo$i-retention-full=99"
        done
        printf '%s\n' "compress-type=zst" "log-path=$W/pgbr-log" "lock-path=$W/pgbr-lock" \
            "log-level-console=warn" "log-level-file=off" "start-fast=y" ${PGBR_EXTRA:-}
        printf '\n[bench]\npg1-path=%s\npg1-socket-path=%s\npg1-port=%s\n' "$data" "$W/sock" "$PORT"
    } > "$f"
    chmod 600 "$f"; own "$f"
}

ready_count() { ls "$1/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true; }

bench_push() {
    local n=${ARG:-20} rounds=${ROUNDS:-3}
    start_garage
    start_tls
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
    cat "$W"/segs/* > /dev/null   # warm the page cache for every variant alike
    local variants=(local-la s3-la local-plain s3-plain)
    [ -n "$TLS_PORT" ] && variants+=(s3tls-la)
    variants+=(pgbr-local)
    [ -n "$TLS_PORT" ] && variants+=(pgbr-s3)
    local TLS_ENV=(env "SSL_CERT_FILE=$W/tls/ca.pem")
    local TLS_FLAGS=(--s3-endpoint "https://127.0.0.1:$TLS_PORT" --s3-region garage
        --s3-access-key-id "$S3_KEY" --s3-secret-access-key-file "$W/s3-secret")
    # One shell as postgres runs each serial loop, so runuser is not in the timing.
    # Prints "wall_ns cpu_s" (CPU: user+sys of all children, independent of other load).
    run_loop() { # DIR COMMAND-PREFIX...
        "${AS[@]}" bash -c '
            cd "$1/data"; shift; t0=$(date +%s%N)
            for f in $(ls pg_wal/archive_status | sed -n "s/\.ready$//p" | sort); do
                "$@" "$PWD/pg_wal/$f" 2>>../stderr || { echo "push of $f failed: $(tail -3 ../stderr)" >&2; exit 1; }
                mv "pg_wal/archive_status/$f.ready" "pg_wal/archive_status/$f.done"
            done
            wall=$(( $(date +%s%N) - t0 ))
            times > ../times; cpu=$(tail -1 ../times | awk "{ split(\$1,a,\"m\"); split(\$2,b,\"m\"); print a[1]*60+a[2]+b[1]*60+b[2] }")
            echo "$wall $cpu"' _ "$@"
    }
    : > "$W/push-results"
    local r v
    for r in $(seq "$rounds"); do
        echo "round $r/$rounds: pushing ${#SEGS[@]} segments serially per variant..." >&2
        for v in "${variants[@]}"; do
            local dd="$W/dd-$v-$r" u pre=() fl=() cmd=() get=() s
            mkdir -p "$dd/data/pg_wal/archive_status"
            for s in "${SEGS[@]}"; do
                cp "$W/segs/$s" "$dd/data/pg_wal/$s"
                : > "$dd/data/pg_wal/archive_status/$s.ready"
            done
            own "$dd"
            case $v in
                local-*) u=$W/repo-$v-$r ;;
                s3-*) u=s3://pgc/push-$v-$r; fl=("${S3_FLAGS[@]}") ;;
                s3tls-*) u=s3://pgc/push-$v-$r; fl=("${TLS_FLAGS[@]}"); pre=("${TLS_ENV[@]}") ;;
                pgbr-local) pgbr_conf "$W/pgbr-push.conf" "$W/pg-src" "local:$W/repo-pgbr-$r" ;;
                pgbr-s3) pgbr_conf "$W/pgbr-push.conf" "$W/pg-src" "s3:/push-$r" ;;
            esac
            case $v in
                pgbr-*)
                    "${AS[@]}" pgbackrest --config="$W/pgbr-push.conf" --stanza=bench stanza-create >/dev/null
                    cmd=(pgbackrest --config="$W/pgbr-push.conf" --stanza=bench archive-push)
                    get=(pgbackrest --config="$W/pgbr-push.conf" --stanza=bench archive-get) ;;
                *)
                    "${AS[@]}" "${pre[@]}" "$W/bin/pgcellar" --repo "$u" "${fl[@]}" --server bench --conninfo "$CONN" -q init >/dev/null
                    cmd=("${pre[@]}" "$W/bin/wal-push" --repo "$u" "${fl[@]}" --server bench)
                    get=("${pre[@]}" "$W/bin/wal-get" --prefetch 0 --repo "$u" "${fl[@]}" --server bench)
                    case $v in *-plain) cmd+=(--push-lookahead 0) ;; esac ;;
            esac
            sync
            local g0 t0 g1 t1 wall cpu ok=ok
            g0=$(proc_cpu "$GARAGE_PID"); t0=$(proc_cpu "$STUNNEL_PID")
            read -r wall cpu < <(run_loop "$dd" "${cmd[@]}") || { echo "variant $v failed in round $r" >&2; exit 1; }
            g1=$(proc_cpu "$GARAGE_PID"); t1=$(proc_cpu "$STUNNEL_PID")
            for s in "${SEGS[0]}" "${SEGS[${#SEGS[@]}-1]}"; do
                rm -f "$W/check-seg"
                "${AS[@]}" "${get[@]}" "$s" "$W/check-seg" 2>>"$dd/stderr" && cmp -s "$W/check-seg" "$W/segs/$s" || ok=BAD
            done
            [ $ok = ok ] || { echo "variant $v round $r: fetching $s back failed or differs:" >&2; tail -5 "$dd/stderr" >&2; }
            echo "$r $v $wall $cpu $(awk -v a="$g0" -v b="$g1" 'BEGIN{print b-a}') $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') $ok" >> "$W/push-results"
            rm -rf "$dd" "$W/check-seg"   # the look-ahead status directory is $dd/data.pgcellar-status
        done
    done
    echo "segments: ${#SEGS[@]} x 16 MiB real WAL, all .ready   cores: $(nproc)   rounds: $rounds   load average at end: $(cut -d' ' -f1 /proc/loadavg)"
    echo "S3: Garage $("$GARAGE" --version 2>&1 | head -1 | awk '{sub(/^cargo:/, "", $2); print $2}'), single node on loopback, fsync ${GARAGE_FSYNC:-0}; pgcellar s3-* over plain HTTP$([ -n "$TLS_PORT" ] && echo "; pgbackrest S3 and s3tls-la over HTTPS via stunnel" || echo "; no stunnel4: no pgbackrest on S3")"
    awk -v n="${#SEGS[@]}" '
        { w[$2, $1] = $3; c[$2, $1] = $4; g[$2, $1] = $5; t[$2, $1] = $6; ok[$2, $1] = $7
          if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 } rounds[$1] = 1 }
        function median(arr, m,   i, j, x) { for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (arr[j] < arr[i]) { x = arr[i]; arr[i] = arr[j]; arr[j] = x } return (m % 2) ? arr[(m + 1) / 2] : (arr[m / 2] + arr[m / 2 + 1]) / 2 }
        END {
            m = 0; for (r in rounds) m++
            names["local-la"] = "wal-push local, look-ahead (defaults)"; names["s3-la"] = "wal-push S3, look-ahead (defaults)"
            names["local-plain"] = "wal-push local --push-lookahead 0"; names["s3-plain"] = "wal-push S3 --push-lookahead 0"
            names["s3tls-la"] = "wal-push S3 via TLS proxy, look-ahead"
            names["pgbr-local"] = "pgbackrest archive-push local (sync)"; names["pgbr-s3"] = "pgbackrest archive-push S3 via TLS"
            base["s3-la"] = "local-la"; base["s3-plain"] = "local-plain"; base["s3tls-la"] = "local-la"; base["pgbr-s3"] = "pgbr-local"
            pgbr["local-la"] = "pgbr-local"; pgbr["local-plain"] = "pgbr-local"
            pgbr["s3-la"] = "pgbr-s3"; pgbr["s3-plain"] = "pgbr-s3"; pgbr["s3tls-la"] = "pgbr-s3"
            for (i = 1; i <= k; i++) {
                v = order[i]; delete a; delete b; delete q; delete gg; delete tt; delete p; bad = 0
                for (r = 1; r <= m; r++) {
                    a[r] = w[v, r]; b[r] = c[v, r]; gg[r] = g[v, r]; tt[r] = t[v, r]; if (ok[v, r] != "ok") bad++
                    if (v in base) q[r] = w[v, r] / w[base[v], r]
                    if ((v in pgbr) && ((pgbr[v], r) in w)) p[r] = w[v, r] / w[pgbr[v], r]
                }
                printf "%-40s median %7.3f s (%6.1f ms/segment)  CPU %5.2f s  Garage CPU %5.2f s", names[v], median(a, m) / 1e9, median(a, m) / 1e6 / n, median(b, m), median(gg, m)
                if (v ~ /tls/ || v == "pgbr-s3") printf "  stunnel CPU %4.2f s", median(tt, m)
                if (v in base) printf "  S3/local %.2fx", median(q, m)
                if (length(p) == m) printf "  x pgbackrest same store %.2f", median(p, m)
                if (bad) printf "  FETCH-BACK FAILED in %d round(s)", bad
                printf "\n"
            }
            printf "target: S3 <= 1.5x local (same tool, same run: median of per-round ratios)\n"
            printf "per-round wall seconds:"
            for (r = 1; r <= m; r++) { printf "\n  [%d]", r; for (i = 1; i <= k; i++) printf " %s=%.2f", order[i], w[order[i], r] / 1e9 }
            printf "\n"
        }' "$W/push-results"
}

bench_load() {
    local secs=${ARG:-60}
    start_garage
    start_tls
    # ~1 MB of random text per transaction (md5 is hex: incompressible-ish like real data).
    cat > "$W/insert-1MB.sql" <<'EOF'
INSERT INTO big SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768);
EOF
    own "$W/insert-1MB.sql"
    local variants=(wal-push-s3 wal-push-local) v
    if [ -n "$TLS_PORT" ]; then variants+=(pgbackrest-s3); else variants+=(pgbackrest-local); fi
    for v in "${variants[@]}"; do
        local d="$W/pg-load-$v" cmd
        rm -rf "$W/repo-load" "$W/repo-pgbr-load"
        case $v in
            wal-push-s3) s3_toml "$W/load-s3.toml" "s3://pgc/load"; cmd="$W/bin/wal-push --config $W/load-s3.toml %p" ;;
            wal-push-local) cmd="$W/bin/wal-push --repo $W/repo-load --server bench %p" ;;
            pgbackrest-*) cmd="pgbackrest --config=$W/pgbr-load.conf --stanza=bench archive-push %p" ;;
        esac
        # Archiving fails (and is retried) until the repository is registered.
        new_cluster "$d" "$cmd"
        case $v in
            wal-push-s3) "${AS[@]}" "$W/bin/pgcellar" --config "$W/load-s3.toml" --conninfo "$CONN" -q init >/dev/null ;;
            wal-push-local) "${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-load" --server bench --conninfo "$CONN" -q init >/dev/null ;;
            pgbackrest-s3) pgbr_conf "$W/pgbr-load.conf" "$d" "s3:/load" ;;
            pgbackrest-local) pgbr_conf "$W/pgbr-load.conf" "$d" "local:$W/repo-pgbr-load" ;;
        esac
        case $v in pgbackrest-*) "${AS[@]}" pgbackrest --config="$W/pgbr-load.conf" --stanza=bench stanza-create >/dev/null ;; esac
        PSQL -c "CREATE TABLE big (t text)"
        PSQL -c "SELECT pg_switch_wal()" >/dev/null
        sleep 2
        echo "== $v: pgbench -n -f insert-1MB.sql -c 2 -j 2 -T $secs" >&2
        local a0 lsn0 g0 g1
        a0=$(PSQL -c "SELECT archived_count FROM pg_stat_archiver")
        lsn0=$(PSQL -c "SELECT pg_current_wal_lsn()")
        g0=$(proc_cpu "$GARAGE_PID")
        "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -f "$W/insert-1MB.sql" -c 2 -j 2 -T "$secs" postgres > "$W/pgbench-$v.out" 2>&1 &
        local pb=$! t=0 series="" max=0 c
        while kill -0 $pb 2>/dev/null; do
            sleep 5; t=$((t + 5))
            c=$(ready_count "$d"); series="$series ${t}s:$c"; [ "$c" -gt "$max" ] && max=$c
        done
        wait $pb || true
        g1=$(proc_cpu "$GARAGE_PID")
        local end_ready mb tps st t1 drain
        end_ready=$(ready_count "$d")
        mb=$(PSQL -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576)")
        tps=$(grep -o 'tps = [0-9.]*' "$W/pgbench-$v.out" | head -1)
        st=$(PSQL -c "SELECT archived_count - $a0, failed_count FROM pg_stat_archiver")
        # How long the backlog takes to drain after the load stops.
        t1=$(now_ns)
        while [ "$(ready_count "$d")" -gt 0 ] && [ $(( ($(now_ns) - t1) / 1000000000 )) -lt 300 ]; do sleep 0.5; done
        drain=$(( ($(now_ns) - t1) / 1000000 ))
        printf '%-16s WAL %s MB in %ss (%s) | .ready every 5s:%s | max %s | at end: %s | archived,failed: %s | drained in %.1f s | Garage CPU %.1f s\n' \
            "$v" "$mb" "$secs" "$tps" "$series" "$max" "$end_ready" "$st" "$(awk -v x="$drain" 'BEGIN{print x/1000}')" \
            "$(awk -v a="$g0" -v b="$g1" 'BEGIN{print b-a}')"
        [ "$(cut -d'|' -f2 <<<"$st")" = 0 ] || { echo "  archiver failures; last lines of the server log:"; grep -iE 'archive|wal-push|error' "$d.log" | tail -5 | sed 's/^/  /'; }
        stop_cluster "$d"
        rm -rf "$d" "$d.pgcellar-status"
    done
    echo "cores: $(nproc)   load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "target: wal-push to S3 keeps the .ready backlog <= 1 segment$([ -n "$TLS_PORT" ] || echo '; pgbackrest on a local repository (no stunnel4)')"
}

bench_backup() {
    local gb=${ARG:-1.5} scale rounds=${ROUNDS:-1}
    scale=$(awk -v g="$gb" 'BEGIN { s = int(g * 1000 / 15 + 0.5); if (s < 1) s = 1; print s }')
    start_garage
    start_tls
    local d=$W/pg-bk
    # Nothing is archived while loading: the backups need only their own WAL.
    new_cluster "$d" "true"
    echo "loading pgbench scale $scale..." >&2
    "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s "$scale" -q postgres >/dev/null 2>&1
    PSQL -c "VACUUM ANALYZE"
    PSQL -c "CHECKPOINT"
    local data_bytes; data_bytes=$(du -sb --exclude=pg_wal "$d" | cut -f1)
    # One fresh pgcellar repository per variant and round (no backup shares objects
    # with another); pgBackRest's full backups share nothing, one stanza per store.
    local j r chain="" pgbr_repos=("local:$W/repo-pgbr-bk") s3n=""
    for r in $(seq "$rounds"); do
        for j in 1 4; do
            "${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-bk-local-j$j-$r" --server bench --conninfo "$CONN" -q init >/dev/null
            s3_toml "$W/bk-s3-j$j-$r.toml" "s3://pgc/bk-j$j-$r"
            "${AS[@]}" "$W/bin/pgcellar" --config "$W/bk-s3-j$j-$r.toml" --conninfo "$CONN" -q init >/dev/null
            chain="$chain$W/bin/wal-push --push-lookahead 0 --repo $W/repo-bk-local-j$j-$r --server bench \"\$1\"\n"
            chain="$chain$W/bin/wal-push --push-lookahead 0 --config $W/bk-s3-j$j-$r.toml \"\$1\"\n"
        done
    done
    [ -n "$TLS_PORT" ] && { pgbr_repos+=("s3:/bk"); s3n=2; }
    PGBR_EXTRA="archive-timeout=600" pgbr_conf "$W/pgbr-bk.conf" "$d" "${pgbr_repos[@]}"
    PGBR=("${AS[@]}" pgbackrest --config="$W/pgbr-bk.conf" --stanza=bench)
    "${PGBR[@]}" stanza-create >/dev/null
    chain="${chain}pgbackrest --config=$W/pgbr-bk.conf --stanza=bench archive-push \"\$1\"\n"
    # A script: PostgreSQL cuts an archive_command longer than 1023 bytes after %p expansion;
    # its name contains "pgbackrest" because pgbackrest backup insists on that word.
    printf '#!/bin/sh\n# every repository of this run, in turn (a failure makes PostgreSQL retry all)\nset -e\n'"$chain" > "$W/archive-pgcellar-and-pgbackrest.sh"
    chmod 755 "$W/archive-pgcellar-and-pgbackrest.sh"
    PSQL -c "ALTER SYSTEM SET archive_command = '$W/archive-pgcellar-and-pgbackrest.sh %p'"
    PSQL -c "SELECT pg_reload_conf()" >/dev/null
    # Files must age past the safe horizon, as they would between nightly backups.
    sleep 3

    settle() {
        PSQL -c "CHECKPOINT"
        local seg last i
        seg=$(PSQL -c "SELECT pg_walfile_name(pg_switch_wal())")
        for i in $(seq 1 1200); do
            last=$(PSQL -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if [[ "$last" == "$seg" || "$last" > "$seg" ]]; then return; fi
            sleep 0.5
        done
        echo "archiver did not catch up with $seg" >&2
        exit 1
    }
    : > "$W/bk-results"
    # measure NAME ROUND COMMAND...: one timed step, as postgres; appends
    # "NAME ROUND wall_s maxrss_kib user_s sys_s garage_cpu_s stunnel_cpu_s status".
    measure() {
        local name=$1 round=$2 g0 t0 g1 t1 st=ok; shift 2
        sync
        g0=$(proc_cpu "$GARAGE_PID"); t0=$(proc_cpu "$STUNNEL_PID")
        "${AS[@]}" /usr/bin/time -o "$W/time.out" -f '%e %M %U %S' "$@" > "$W/out-$name" 2> "$W/err-$name" || st=FAILED
        g1=$(proc_cpu "$GARAGE_PID"); t1=$(proc_cpu "$STUNNEL_PID")
        echo "$name $round $(tail -1 "$W/time.out") $(awk -v a="$g0" -v b="$g1" 'BEGIN{print b-a}') $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') $st" >> "$W/bk-results"
        if [ $st != ok ]; then
            echo "$name (round $round) FAILED: $*"
            sed 's/^/    /' "$W/err-$name" | tail -20
        fi
        echo "  $(tail -1 "$W/bk-results")" >&2
    }
    declare -A LABEL RBYTES
    pgbr_label() { "${PGBR[@]}" --repo="$1" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])'; }
    local name dest
    for r in $(seq "$rounds"); do
        echo "round $r/$rounds: full backups..." >&2
        for j in 1 4; do
            settle; measure "cellar-local-j$j" "$r" "$W/bin/base-backup" --repo "$W/repo-bk-local-j$j-$r" --server bench \
                --pgdata "$d" --conninfo "$CONN" -q --full --jobs "$j"
            settle; measure "cellar-s3-j$j" "$r" "$W/bin/base-backup" --config "$W/bk-s3-j$j-$r.toml" \
                --pgdata "$d" --conninfo "$CONN" -q --full --jobs "$j"
            settle; measure "pgbr-local-j$j" "$r" pgbackrest --config="$W/pgbr-bk.conf" --stanza=bench --repo=1 \
                --type=full --process-max="$j" backup
            LABEL[local-j$j-$r]=$(pgbr_label 1)
            if [ -n "$s3n" ]; then
                settle; measure "pgbr-s3-j$j" "$r" pgbackrest --config="$W/pgbr-bk.conf" --stanza=bench --repo=2 \
                    --type=full --process-max="$j" backup
                LABEL[s3-j$j-$r]=$(pgbr_label 2)
            fi
        done
        echo "round $r/$rounds: restores (each into an empty directory)..." >&2
        for j in 1 4; do
            for name in "cellar-local-j$j" "cellar-s3-j$j" "pgbr-local-j$j" ${s3n:+"pgbr-s3-j$j"}; do
                dest=$W/r-$name/data
                rm -rf "$W/r-$name"; mkdir -p "$dest"; chmod 700 "$dest"; own "$W/r-$name"
                case $name in
                    cellar-local-*) measure "restore-$name" "$r" "$W/bin/restore" --repo "$W/repo-bk-local-j$j-$r" --server bench -q --jobs "$j" "$dest" ;;
                    cellar-s3-*) measure "restore-$name" "$r" "$W/bin/restore" --config "$W/bk-s3-j$j-$r.toml" -q --jobs "$j" "$dest" ;;
                    pgbr-local-*) measure "restore-$name" "$r" pgbackrest --config="$W/pgbr-bk.conf" --stanza=bench --repo=1 \
                        --set="${LABEL[local-j$j-$r]}" --pg1-path="$dest" --process-max="$j" restore ;;
                    pgbr-s3-*) measure "restore-$name" "$r" pgbackrest --config="$W/pgbr-bk.conf" --stanza=bench --repo=2 \
                        --set="${LABEL[s3-j$j-$r]}" --pg1-path="$dest" --process-max="$j" restore ;;
                esac
                RBYTES[$name]=$(du -sb "$dest" | cut -f1)
                # Keep the last S3 --jobs 4 copy for the recovery check; the others only cost disk.
                [ "$name" = cellar-s3-j4 ] && [ "$r" = "$rounds" ] || rm -rf "$W/r-$name"
            done
        done
    done
    local repo_local_j1 repo_pgbr_local
    repo_local_j1=$(du -sbc "$W/repo-bk-local-j1-1/bench/objects" "$W/repo-bk-local-j1-1/bench/backups" | tail -1 | cut -f1)
    repo_pgbr_local=$(du -sb "$W/repo-pgbr-bk/backup/bench/${LABEL[local-j1-1]}" | cut -f1)
    local verify="skipped (VERIFY=0)"
    if [ "${VERIFY:-1}" = 1 ]; then
        echo "recovery check of the S3 --jobs 4 copy (wal-get from S3)..." >&2
        stop_cluster "$d"
        local rd=$W/r-cellar-s3-j4/data t0 ms rows
        t0=$(now_ns)
        if "${AS[@]}" "$PGBIN/pg_ctl" -D "$rd" -l "$W/r-verify.log" -w -t 600 start >/dev/null; then
            until [ "$(PSQL -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.2; [ $(( ($(now_ns) - t0) / 1000000000 )) -lt 600 ] || break; done
            ms=$(( ($(now_ns) - t0) / 1000000 ))
            rows=$(PSQL -c "SELECT count(*) FROM pgbench_accounts" 2>&1 || true)
            verify="started and promoted in $(awk -v x="$ms" 'BEGIN{printf "%.1f", x/1000}') s; pgbench_accounts rows $rows (expected $((scale * 100000)))"
            stop_cluster "$rd"
        else
            verify="FAILED to start: $(tail -3 "$W/r-verify.log" | tr '\n' ' ')"
        fi
        verify="$verify; restore_command: $(grep -h '^restore_command' "$rd/postgresql.auto.conf" | sed "s|$W|\$W|g")"
    fi

    VERIFY_MSG=$verify python3 - "$W/bk-results" <<EOF
import os, statistics, sys
samples = {}
for line in open(sys.argv[1]):
    f = line.split()
    samples.setdefault(f[0], []).append(dict(wall=float(f[2]), rss=int(f[3]) / 1024, cpu=float(f[4]) + float(f[5]),
                                             garage=float(f[6]), stunnel=float(f[7]), ok=f[8] == "ok"))
# Medians over rounds (peak RSS: the largest); a step that failed once counts as failed.
rows = {}
for k, v in samples.items():
    med = lambda key: statistics.median(x[key] for x in v)
    rows[k] = dict(wall=med("wall"), rss=max(x["rss"] for x in v), cpu=med("cpu"), garage=med("garage"),
                   stunnel=med("stunnel"), ok=all(x["ok"] for x in v), walls=[x["wall"] for x in v])
rounds = $rounds
have_s3_pgbr = "$s3n" != ""
print()
print(f"data directory without pg_wal: {$data_bytes / 1e6:.0f} MB (pgbench scale $scale), cores: $(nproc), rounds: {rounds}, load average at end: $(cut -d' ' -f1-3 /proc/loadavg), Garage fsync: ${GARAGE_FSYNC:-0}")
print("pgcellar S3 over plain HTTP" + ("; pgbackrest S3 over HTTPS through stunnel (TLS included)" if have_s3_pgbr else "; no stunnel4: pgbackrest local only"))
def cell(k, what="wall"):
    r = rows.get(k)
    if r is None: return "       -"
    if not r["ok"]: return "  FAILED"
    return f"{r[what]:7.2f}s" if what == "wall" else f"{r[what]:6.0f}MiB"
def ratio(a, b):
    ra, rb = rows.get(a), rows.get(b)
    if not ra or not rb or not ra["ok"] or not rb["ok"]: return "    -"
    if rounds > 1:  # median of per-round ratios (same load within a round)
        return f"{statistics.median(x / y for x, y in zip(ra['walls'], rb['walls'])):5.2f}x"
    return f"{ra['wall'] / rb['wall']:5.2f}x"
print()
print("wall: " + ("median of rounds; ratios: median of per-round ratios; RSS: largest" if rounds > 1 else "one round"))
print(f"{'step':36} {'local':>9} {'S3':>9} {'S3/local':>8}   {'RSS local':>9} {'RSS S3':>9}  {'limit':>6}  {'client CPU l/S3':>15}  Garage CPU")
for tool, label in (("cellar", "pgcellar"), ("pgbr", "pgbackrest")):
    for j in (1, 4):
        for step, pre in (("backup", ""), ("restore", "restore-")):
            a, b = f"{pre}{tool}-local-j{j}", f"{pre}{tool}-s3-j{j}"
            flag = "--jobs" if tool == "cellar" else "--process-max"
            limit = f"{64 + 8 * j:4d}MiB" if tool == "cellar" else "     -"
            cpu = lambda k: f"{rows[k]['cpu']:.1f}" if k in rows else "-"
            g = f"{rows[b]['garage']:.1f}s" if b in rows else "-"
            if b in rows and rows[b]['stunnel'] > 0: g += f" (+stunnel {rows[b]['stunnel']:.1f}s)"
            print(f"{label + ' ' + step + ' ' + flag + ' ' + str(j):36} {cell(a):>9} {cell(b):>9} {ratio(b, a):>8}   "
                  f"{cell(a, 'rss'):>9} {cell(b, 'rss'):>9}  {limit}  {cpu(a) + ' / ' + cpu(b):>15}  {g}")
print("targets: S3/local <= 1.3x; pgcellar peak RSS <= 64 MiB + 8 MiB per job")
print()
print("pgcellar / pgbackrest (same store, same jobs):")
for j in (1, 4):
    for step, pre in (("backup", ""), ("restore", "restore-")):
        print(f"  {step:8} jobs {j}: local {ratio(f'{pre}cellar-local-j{j}', f'{pre}pgbr-local-j{j}')}"
              f"   S3 {ratio(f'{pre}cellar-s3-j{j}', f'{pre}pgbr-s3-j{j}')}")
if rounds > 1:
    print()
    print("per-round wall seconds:")
    for k in samples:
        print(f"  {k:28} " + " ".join(f"{x['wall']:.2f}" for x in samples[k]))
print()
print(f"one full backup, local repositories (objects + manifest / backup set, without WAL): pgcellar {$repo_local_j1 / 1e6:.1f} MB, pgbackrest {$repo_pgbr_local / 1e6:.1f} MB")
rb = {$(for k in "${!RBYTES[@]}"; do printf '"%s": %s, ' "$k" "${RBYTES[$k]}"; done)}
print("restored data directories (MB): " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(rb.items())))
print("recovery check: " + os.environ["VERIFY_MSG"])
EOF
}

case $MODE in
    push) bench_push ;;
    load) bench_load ;;
    backup) bench_backup ;;
esac
