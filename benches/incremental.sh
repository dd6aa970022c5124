#!/usr/bin/env bash
# Benchmark of issue 12 (page-level incrementals): pgcellar vs pgBackRest 2.45
# (file-level incremental, zst, process-max 2) in one run on the same data.
#
#   bash benches/incremental.sh [SIZE_MB]         (default 1500: ~1.5 GB, ~12 min on 2 shared cores)
#   BENCH_JSON=/tmp/incr.json bash benches/incremental.sh 150   (quick check, ~8 min)
#
# Environment: BENCH_UPDATES (4000 random single-row updates per round), BENCH_ROUNDS
# (10 incrementals after the first one), BENCH_RSS_SIZE_MB (second data size for peak
# RSS, default SIZE_MB/4; 0 skips it), BENCH_REPEAT (each restore N times, one tool
# after the other; medians reported; default 1), BENCH_SEED, BENCH_PORT, BENCH_JSON
# (the final table as JSON), BENCH_KEEP=DIR (copy the raw measurements and logs there
# at exit). Needs: PostgreSQL 15 server binaries, pgbackrest (Debian's 2.45:
# apt-get install pgbackrest), python3, the zstd CLI. Run as root (servers run as
# postgres) or as the cluster owner. The scratch directory is under /tmp and removed.
#
# Workload: a scratch PostgreSQL 15 cluster of about SIZE_MB (data directory without
# pg_wal) whose archive_command pushes every WAL file into both repositories:
# `random_rows`, a table (plus primary key) of random rows, poorly compressible
# (md5 text, random numbers), ~11/30 of the cluster, and pgbench tables for the rest.
# Vacuumed and checkpointed. Then, one tool after the other, warm cache:
#   1. full backup           base-backup --full --jobs 2 | pgbackrest --type=full
#   2. BENCH_UPDATES updates `UPDATE random_rows ... WHERE id = <random id>` (pgbench,
#      one statement per transaction), incremental by both
#   3. no-change incremental by both
#   4. restore of the full   restore --jobs 2 --backup ID | restore --process-max=2 --set
#   5. BENCH_ROUNDS x (updates, incremental by both), restore of the last one by both
#   6. a second cluster of BENCH_RSS_SIZE_MB: full backup and restore by both (peak RSS)
# Before each timed step: CHECKPOINT, archiver caught up, `sync`. The updates of a
# round are checkpointed 3 s before its backups start, as a scheduled backup would
# find them (files modified within 2 s of a backup's start are re-read by the next).
#
# What is measured (tools.py measure): every command runs under a python wrapper that
# is a child subreaper; when it has reaped the whole process tree it reads
#   wall     seconds until the command's own process exited
#   cpu      user+sys of the process tree (RUSAGE_CHILDREN: pgbackrest's local
#            workers included)
#   maxrss   the largest resident set of any one process of the tree
#   rchar / read_bytes  of the tree (/proc/self/io of the wrapper, to which the
#            kernel adds each reaped child's counters): rchar = bytes returned by
#            read() calls, page-cache hits included (the cache is warm here, so this
#            is the useful one); read_bytes = bytes fetched from the block device.
#            PostgreSQL's own reads (the server's processes) are not included.
# Bytes stored by a backup: growth of the repository without WAL (pgcellar: the
# server directory without wal/, i.e. backups/ for format 1 and objects/ + manifests
# for format 2; pgbackrest: backup/, without archive/), each inode counted once
# (format 1 hard links); objects written but not referenced (pgcellar's delta
# dropped for a rebase, left for the next sweep) count, as they are on disk until
# then; pgcellar's manifest figure (totals.copied_stored_size) is printed beside.
# Changed pages: after each pair of backups (checkpointed,
# nothing writing) the data directory (without pg_wal, pg_stat_tmp, ...) is compared
# 8 KiB page by page with a copy of its state at the previous pair; the changed pages
# are concatenated and compressed with `zstd -3` ("compressed changed pages"). Pages
# whose only change is a hint bit (autoanalyze, later reads) count as changed too.
set -euo pipefail

SIZE_MB=${1:-1500}
UPDATES=${BENCH_UPDATES:-4000}
ROUNDS=${BENCH_ROUNDS:-10}
RSS_SIZE_MB=${BENCH_RSS_SIZE_MB:-$((SIZE_MB / 4))}
REPEAT=${BENCH_REPEAT:-1}
SEED=${BENCH_SEED:-12}
PORT=${BENCH_PORT:-54339}
# Issue 12's figure for pgBackRest 2.59 block incremental on this workload (not measured here).
PGBR259_BLOCK_INCR_MB=110
HERE=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
command -v zstd >/dev/null || { echo "the zstd CLI is not installed (apt-get install zstd)" >&2; exit 1; }

echo "building release binaries..." >&2
(cd "$HERE" && cargo build --release --quiet --bin wal-push --bin wal-get --bin pgcellar --bin base-backup --bin restore)
COMMIT=$(git -C "$HERE" rev-parse HEAD)
DIRTY=$(git -C "$HERE" status --porcelain --untracked-files=no | grep -q . && echo true || echo false)

W=$(mktemp -d /tmp/pgcellar-ibench-XXXXXX)
chmod 755 "$W"
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
cleanup() {
    if [ -n "${BENCH_KEEP:-}" ]; then
        mkdir -p "$BENCH_KEEP" && cp -r "$W/m" "$W/pd" "$W/facts" "$W"/*.log "$BENCH_KEEP/" 2>/dev/null || true
    fi
    [ -f "$W/pgdata/PG_VERSION" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/bin" "$W/sock" "$W/pgbr-log" "$W/pgbr-lock" "$W/m" "$W/pd"
for b in wal-push wal-get pgcellar base-backup restore; do cp "$HERE/target/release/$b" "$W/bin/"; done
own() { [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$@" || true; }

cat > "$W/tools.py" <<'PYEOF'
"""Helpers of benches/incremental.sh: measure, bytes, pagediff, report."""
import ctypes, json, os, resource, shutil, statistics, subprocess, sys, time

PAGE = 8192


def proc_io():
    d = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            d[k.strip()] = int(v)
    return d


def measure(out, cmd):
    # As subreaper this process adopts orphaned grandchildren; the kernel adds every
    # reaped child's rusage and I/O counters to its parent's, so after reaping the
    # whole tree RUSAGE_CHILDREN and /proc/self/io cover all of it.
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    ru0, io0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), proc_io(), time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    code, wall, deadline = None, None, None
    while True:
        try:
            wpid, st = os.waitpid(-1, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            break
        if wpid == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            continue
        if wpid == pid:
            wall, code = time.monotonic() - t0, os.waitstatus_to_exitcode(st)
            deadline = time.monotonic() + 10
    ru1, io1 = resource.getrusage(resource.RUSAGE_CHILDREN), proc_io()
    res = {"exit": code, "wall": wall,
           "cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
           "user": ru1.ru_utime - ru0.ru_utime, "sys": ru1.ru_stime - ru0.ru_stime,
           "maxrss_kb": ru1.ru_maxrss}
    for k in ("rchar", "read_bytes", "wchar", "write_bytes"):
        res[k] = io1[k] - io0[k]
    with open(out, "w") as f:
        json.dump(res, f)
    sys.exit(0 if code == 0 else 1)


def tree_bytes(root, exclude=()):
    """Apparent size of the regular files under root, each inode once."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in exclude]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


SKIP_DIRS = {"pg_wal", "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify",
             "pg_serial", "pg_snapshots", "pg_subtrans"}
SKIP_FILES = {"postmaster.pid", "postmaster.opts"}


def data_files(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames
                       if not d.startswith("pgsql_tmp") and not (rel == "." and d in SKIP_DIRS)]
        for name in filenames:
            p = os.path.join(dirpath, name)
            if (rel == "." and name in SKIP_FILES) or os.path.islink(p):
                continue
            out[os.path.normpath(os.path.join(rel, name))] = p
    return out


def pagediff(snap, pgdata, heap, index, out):
    """Compare pgdata with its copy snap page by page, bring the copy up to date and
    write the counts and zstd -3 sizes of the changed pages as JSON to out. heap and
    index are the table's relation paths (pg_relation_filepath)."""
    def groups_of(rel):
        g = ["cluster"]
        base, _, seg = rel.partition(".")
        if rel == heap or (base == heap and seg.isdigit()):
            g.append("heap")
        for r in (heap, index):
            if base == r or rel.startswith(r + "_"):
                g.append("table")
        return g
    names = ("cluster", "table", "heap")
    stats = {g: {"pages": 0, "changed_pages": 0, "changed_bytes": 0} for g in names}
    sinks = {g: open(out + "." + g, "wb") for g in names}
    init = not os.path.isdir(snap)
    cur = data_files(pgdata)
    files_changed = 0
    for rel, path in sorted(cur.items()):
        spath = os.path.join(snap, rel)
        gs = groups_of(rel)
        size = os.path.getsize(path)
        for g in gs:
            stats[g]["pages"] += (size + PAGE - 1) // PAGE
        if init or not os.path.exists(spath):
            os.makedirs(os.path.dirname(spath), exist_ok=True)
            shutil.copyfile(path, spath)
            if not init:  # a new file: all its pages are new
                files_changed += 1
                with open(path, "rb") as f:
                    data = f.read()
                for g in gs:
                    stats[g]["changed_pages"] += (len(data) + PAGE - 1) // PAGE
                    stats[g]["changed_bytes"] += len(data)
                    sinks[g].write(data)
            continue
        changed = False
        with open(path, "rb") as f, open(spath, "r+b") as s:
            off = 0
            while True:
                a = f.read(128 * PAGE)
                if not a:
                    break
                b = s.read(len(a))
                if a != b:
                    changed = True
                    for i in range(0, len(a), PAGE):
                        if a[i:i + PAGE] != b[i:i + PAGE]:
                            for g in gs:
                                stats[g]["changed_pages"] += 1
                                stats[g]["changed_bytes"] += len(a[i:i + PAGE])
                                sinks[g].write(a[i:i + PAGE])
                    s.seek(off)
                    s.write(a)
                off += len(a)
            if os.path.getsize(spath) != off:
                changed = True
                s.truncate(off)
        files_changed += changed
    for rel in set(data_files(snap)) - set(cur):
        os.unlink(os.path.join(snap, rel))
    res = {"init": init, "files_changed": files_changed}
    for g in names:
        sinks[g].close()
        z = subprocess.run(["zstd", "-3", "-T1", "-q", "-c", out + "." + g],
                           check=True, stdout=subprocess.PIPE).stdout
        stats[g]["changed_zstd_bytes"] = len(z)
        os.unlink(out + "." + g)
        res[g] = stats[g]
    with open(out, "w") as f:
        json.dump(res, f)


def report(w, json_out):
    facts = {}
    with open(os.path.join(w, "facts")) as f:
        for line in f:
            k, v = line.rstrip("\n").split(" ", 1)
            facts[k] = v
    samples = {}
    for p in sorted(os.listdir(os.path.join(w, "m"))):
        if p.endswith(".json"):
            samples.setdefault(p[:-5].split("#")[0], []).append(json.load(open(os.path.join(w, "m", p))))
    # Repeated steps ("name#2", ...): medians of times, the largest RSS.
    m = {k: {key: (max if key == "maxrss_kb" else statistics.median)(s[key] for s in v) for key in v[0]}
         for k, v in samples.items()}
    pd = {p[:-5]: json.load(open(os.path.join(w, "pd", p)))
          for p in os.listdir(os.path.join(w, "pd")) if p.endswith(".json")}
    num = lambda k: float(facts[k])
    stored = lambda tool, step: num(f"{tool}_{step}_after") - num(f"{tool}_{step}_before")
    rounds = int(facts["rounds"])
    mb = 1e6
    rows = []

    def row(metric, c, p, target="", check=None, unit=""):
        # A ratio of two ratios says nothing: left blank.
        ratio = c / p if unit != "x" and c is not None and p not in (None, 0) else None
        met = None
        if check is not None:
            which, limit = check
            v = {"pgcellar": c, "ratio": ratio}[which]
            met = v is not None and v <= limit
        rows.append({"metric": metric, "unit": unit, "pgcellar": c, "pgbackrest": p,
                     "ratio": ratio, "target": target, "met": met})

    def tool_rows(label, step, keys):
        for key, unit, scale, target, check in keys:
            c = m[f"cellar_{step}"][key] / scale
            p = m[f"pgbr_{step}"][key] / scale
            row(f"{label}: {key if key != 'maxrss_kb' else 'peak RSS'}", c, p, target, check, unit)

    size = facts["size_mb"]
    z1 = pd["incr1"]["cluster"]["changed_zstd_bytes"]
    zt1 = pd["incr1"]["table"]["changed_zstd_bytes"]
    tool_rows("full backup", "full", [("wall", "s", 1, "ratio <= 0.8", ("ratio", 0.8)),
                                      ("cpu", "s", 1, "", None),
                                      ("maxrss_kb", "MB", 1024, "", None)])
    row("full backup: bytes stored", stored("cellar", "full") / mb, stored("pgbr", "full") / mb, unit="MB")
    tool_rows(f"incremental after {facts['updates']} updates", "incr1",
              [("wall", "s", 1, "", None), ("cpu", "s", 1, "", None)])
    c1, p1 = stored("cellar", "incr1"), stored("pgbr", "incr1")
    row(f"incremental after {facts['updates']} updates: bytes stored", c1 / mb, p1 / mb, unit="MB")
    row("  / compressed changed pages (cluster)", c1 / z1, p1 / z1, "pgcellar <= 1.5", ("pgcellar", 1.5), "x")
    row("  / compressed changed pages (random_rows + pkey)", c1 / zt1, p1 / zt1, unit="x")
    row(f"  / pgBackRest 2.59 block incr ({PGBR259} MB, issue figure, NOT measured)",
        c1 / mb / PGBR259, p1 / mb / PGBR259, "pgcellar ~0.25 (at 1.5 GB)", unit="x")
    tool_rows("no-change incremental", "incr0",
              [("wall", "s", 1, "", None), ("cpu", "s", 1, "", None),
               ("rchar", "MB", mb, "", None), ("read_bytes", "MB", mb, "", None)])
    row("no-change incremental / own full backup time",
        m["cellar_incr0"]["wall"] / m["cellar_full"]["wall"],
        m["pgbr_incr0"]["wall"] / m["pgbr_full"]["wall"], "pgcellar <= 0.3", ("pgcellar", 0.3), "x")
    row("no-change incremental: bytes stored", stored("cellar", "incr0") / mb, stored("pgbr", "incr0") / mb, unit="MB")
    tool_rows("restore of the full", "restore_full", [("wall", "s", 1, "ratio <= 0.8", ("ratio", 0.8)),
                                                       ("cpu", "s", 1, "", None),
                                                       ("maxrss_kb", "MB", 1024, "", None)])
    if rounds:
        steps = [f"r{i}" for i in range(1, rounds + 1)]
        zs = sum(pd[s]["cluster"]["changed_zstd_bytes"] for s in steps)
        cs = [stored("cellar", s) for s in steps]
        ps = [stored("pgbr", s) for s in steps]
        row(f"{rounds} more incrementals: mean wall",
            sum(m[f"cellar_{s}"]["wall"] for s in steps) / rounds,
            sum(m[f"pgbr_{s}"]["wall"] for s in steps) / rounds, unit="s")
        row(f"{rounds} more incrementals: mean bytes stored", sum(cs) / rounds / mb, sum(ps) / rounds / mb, unit="MB")
        row(f"{rounds} more incrementals: largest bytes stored", max(cs) / mb, max(ps) / mb, unit="MB")
        row("  sum stored / sum compressed changed pages", sum(cs) / zs, sum(ps) / zs, "pgcellar <= 1.5", ("pgcellar", 1.5), "x")
        tool_rows(f"restore after {rounds + 2} incrementals", "restore_last",
                  [("wall", "s", 1, "", None), ("maxrss_kb", "MB", 1024, "", None)])
        row("  / own restore of the full", m["cellar_restore_last"]["wall"] / m["cellar_restore_full"]["wall"],
            m["pgbr_restore_last"]["wall"] / m["pgbr_restore_full"]["wall"], "pgcellar <= 1.2", ("pgcellar", 1.2), "x")
    if "size2_mb" in facts:
        for label, a, b in (("full backup", "full", "full_s2"), ("restore of the full", "restore_full", "restore_full_s2")):
            row(f"peak RSS {label} at {facts['size2_mb']} MB", m[f"cellar_{b}"]["maxrss_kb"] / 1024,
                m[f"pgbr_{b}"]["maxrss_kb"] / 1024, unit="MB")
            row(f"  RSS at {size} MB / at {facts['size2_mb']} MB", m[f"cellar_{a}"]["maxrss_kb"] / m[f"cellar_{b}"]["maxrss_kb"],
                m[f"pgbr_{a}"]["maxrss_kb"] / m[f"pgbr_{b}"]["maxrss_kb"], "flat (~1x)", unit="x")

    d1 = pd["incr1"]
    print()
    print(f"pgcellar {facts['commit']}{' (uncommitted changes)' if facts['dirty'] == 'true' else ''}, "
          f"repository format {facts['format']}; pgbackrest {facts['pgbr_version']}; 2 jobs/processes, zstd level 3")
    print(f"data directory {num('data_bytes') / mb:.0f} MB without pg_wal (asked {size} MB): random_rows "
          f"{num('table_bytes') / mb:.0f} MB with pkey ({facts['table_rows']} rows), pgbench scale {facts['scale']}")
    print(f"changed by the first {facts['updates']} updates (8 KiB pages, as of the two backups):")
    for g, label in (("heap", "random_rows heap"), ("table", "random_rows + pkey, all forks"), ("cluster", "whole data directory")):
        s = d1[g]
        print(f"  {label:32} {s['changed_pages']:>8} of {s['pages']:>8} pages "
              f"({100 * s['changed_pages'] / max(s['pages'], 1):.1f}%), {s['changed_bytes'] / mb:.1f} MB, "
              f"zstd -3 {s['changed_zstd_bytes'] / mb:.1f} MB")
    print()
    w1 = max(len(r["metric"]) for r in rows)
    print(f"{'':{w1}} {'pgcellar':>10} {'pgbackrest':>11} {'ratio':>7}  target")
    fmt = lambda v: "-" if v is None else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    for r in rows:
        verdict = {None: "", True: "  ok", False: "  MISSED"}[r["met"]]
        print(f"{r['metric']:{w1}} {fmt(r['pgcellar']) + r['unit']:>10} {fmt(r['pgbackrest']) + r['unit']:>11} "
              f"{fmt(r['ratio']) + ('x' if r['ratio'] is not None else ''):>7}  {r['target']}{verdict}")
    print()
    print("restored data directories (MB, pgcellar / pgbackrest): " + ", ".join(
        f"{k[9:-7]} {num(k) / mb:.0f} / {num(k[:-7] + '_pgbr') / mb:.0f}"
        for k in facts if k.startswith("restored_") and k.endswith("_cellar")))
    if any(len(v) > 1 for v in samples.values()):
        print("samples (wall s): " + "; ".join(f"{k} {sorted(round(s['wall'], 2) for s in v)}"
                                              for k, v in samples.items() if len(v) > 1))
    if rounds:
        print()
        print("per backup, MB: stored by pgcellar (repository growth, and its manifest's copied_stored_size),")
        print("stored by pgbackrest, zstd -3 of the pages changed since the previous backups (whole data directory):")
        for s in ["full", "incr1", "incr0"] + [f"r{i}" for i in range(1, rounds + 1)]:
            print(f"  {s:6} {stored('cellar', s) / mb:8.1f} ({num(f'cellar_{s}_manifest_added') / mb:8.1f}) "
                  f"{stored('pgbr', s) / mb:8.1f} "
                  + ("       -" if pd[s]["init"] else f"{pd[s]['cluster']['changed_zstd_bytes'] / mb:8.1f}"))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"facts": facts, "rows": rows, "measurements": m, "samples": samples, "changed_pages": pd,
                       "pgbackrest_2_59_block_incr_mb_issue_figure_not_measured": PGBR259,
                       "bytes_stored": {k[:-6]: stored(*k[:-6].split("_", 1))
                                        for k in facts if k.endswith("_after")}}, f, indent=1)
        print(f"\nwritten {json_out}")


PGBR259 = int(os.environ.get("PGBR259_BLOCK_INCR_MB", "110"))

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "measure":
        measure(args[0], args[1:])
    elif cmd == "bytes":
        print(tree_bytes(args[0], args[1:]))
    elif cmd == "pagediff":
        pagediff(*args)
    elif cmd == "report":
        report(args[0], args[1] if len(args) > 1 else "")
PYEOF
export PGBR259_BLOCK_INCR_MB
TOOLS=(python3 "$W/tools.py")

cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo-pgbackrest
compress-type=zst
compress-level=3
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
cat > "$W/update.sql" <<'EOF'
\set id random(1, :nrows)
UPDATE random_rows SET amount = round((random() * 100000)::numeric, 2), ref = md5(random()::text), created = now() WHERE id = :id;
EOF
own "$W"

PSQL=("$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$W/sock" -p "$PORT" -U postgres -d postgres)
CELLAR=("${AS[@]}" "$W/bin/base-backup" --repo "$W/repo-pgcellar" --server bench
    --pgdata "$W/pgdata" --conninfo "host=$W/sock port=$PORT user=postgres" -q)
PGBR=("${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
fact() { echo "$1 $2" >> "$W/facts"; }
: > "$W/facts"

# make_cluster SIZE_MB: a fresh cluster and repositories, loaded and checkpointed.
make_cluster() {
    local size=$1 table_mb scale per_row rows
    "${AS[@]}" "$PGBIN/initdb" -D "$W/pgdata" -A trust -U postgres --no-sync >/dev/null
    cat >> "$W/pgdata/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$W/bin/wal-push --repo $W/repo-pgcellar --server bench %p && pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p'
max_wal_size = 4GB
checkpoint_timeout = 30min
shared_buffers = 256MB
EOF
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
    table_mb=$((size * 11 / 30))
    # ~15 MB per pgbench scale unit, ~25 MB for an empty cluster.
    scale=$(( (size - table_mb - 25) / 15 )); [ "$scale" -ge 1 ] || scale=1
    echo "loading pgbench scale $scale and ~$table_mb MB of random rows..." >&2
    "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s "$scale" -q postgres >/dev/null 2>&1
    "${PSQL[@]}" -c "CREATE TABLE random_rows (id int PRIMARY KEY, account int NOT NULL,
        amount numeric(12,2) NOT NULL, created timestamptz NOT NULL, ref text NOT NULL, note text NOT NULL)"
    insert_rows() {
        "${PSQL[@]}" -c "INSERT INTO random_rows SELECT g, (random() * 1000000)::int,
            round((random() * 100000)::numeric, 2), timestamptz '2026-01-01' - random() * interval '365 days',
            md5(random()::text), md5(random()::text) || ' ' || md5(random()::text) || ' '
            || substr(repeat(md5(random()::text), 4), 1, 90) FROM generate_series($1, $2) g"
    }
    insert_rows 1 20000
    per_row=$("${PSQL[@]}" -c "SELECT pg_total_relation_size('random_rows') / 20000.0")
    rows=$(python3 -c "print(max(20000, int($table_mb * 1048576 / $per_row)))")
    insert_rows 20001 "$rows"
    # As a nightly job would find it: vacuumed (hint bits set) and checkpointed.
    "${PSQL[@]}" -c "VACUUM ANALYZE"
    "${PSQL[@]}" -c "CHECKPOINT"
    NROWS=$rows
    HEAP=$("${PSQL[@]}" -c "SELECT pg_relation_filepath('random_rows')")
    INDEX=$("${PSQL[@]}" -c "SELECT pg_relation_filepath('random_rows_pkey')")
    TABLE_BYTES=$("${PSQL[@]}" -c "SELECT pg_total_relation_size('random_rows')")
    DATA_BYTES=$(( $(du -sb "$W/pgdata" | cut -f1) - $(du -sb "$W/pgdata/pg_wal" | cut -f1) ))
    SCALE=$scale
    "${AS[@]}" "$W/bin/pgcellar" --repo "$W/repo-pgcellar" --server bench \
        --conninfo "host=$W/sock port=$PORT user=postgres" init 2>/dev/null
    "${AS[@]}" pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
    echo "data directory $((DATA_BYTES / 1000000)) MB (random_rows $((TABLE_BYTES / 1000000)) MB, $rows rows)" >&2
    # Files must age past the safe horizon, as they would between nightly backups.
    sleep 3
}
drop_cluster() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$W/pgdata" -m fast stop >/dev/null
    rm -rf "$W/pgdata" "$W/repo-pgcellar" "$W/repo-pgbackrest" "$W/snap" "$W"/r-*
}

# Before each timed step: checkpoint and wait until the archiver has caught up, so
# that neither tool pays for the other's leftovers (dirty buffers, WAL backlog).
settle() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local seg last i
    seg=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_switch_wal())")
    for i in $(seq 1 1200); do
        last=$("${PSQL[@]}" -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if [[ "$last" == "$seg" || "$last" > "$seg" ]]; then sync; return; fi
        sleep 0.5
    done
    echo "archiver did not catch up with $seg" >&2
    exit 1
}
# m NAME COMMAND...: run COMMAND measured; its stdout goes to m/NAME.out.
m() {
    local name=$1; shift
    if ! "${TOOLS[@]}" measure "$W/m/$name.json" "$@" > "$W/m/$name.out" 2> "$W/m/$name.err"; then
        echo "$name failed: $*" >&2
        tail -20 "$W/m/$name.err" >&2
        exit 1
    fi
    python3 -c "import json; d = json.load(open('$W/m/$name.json')); print(f\"  $name: {d['wall']:.2f} s, cpu {d['cpu']:.2f} s, rss {d['maxrss_kb'] // 1024} MB, rchar {d['rchar'] / 1e6:.0f} MB\")" >&2
}
repo_bytes() { # TOOL
    case $1 in
        cellar) "${TOOLS[@]}" bytes "$W/repo-pgcellar/bench" wal ;;
        pgbr) "${TOOLS[@]}" bytes "$W/repo-pgbackrest/backup" ;;
    esac
}
# backups STEP [CELLAR_ARGS...]: a backup by each tool (pgbackrest --type=full when
# CELLAR_ARGS has --full, else incr), then the changed pages since the previous pair.
backups() {
    local step=$1; shift
    local type=incr
    [[ " $* " == *" --full "* ]] && type=full
    settle
    fact "cellar_${step}_before" "$(repo_bytes cellar)"
    m "cellar_$step" "${CELLAR[@]}" --jobs 2 "$@"
    fact "cellar_${step}_after" "$(repo_bytes cellar)"
    # pgcellar's own count of what the backup added (manifest totals), as a cross-check.
    fact "cellar_${step}_manifest_added" "$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['totals']['copied_stored_size'])" \
        "$W/repo-pgcellar/bench/backups/$(last_cellar "$step")/backup.json")"
    settle
    fact "pgbr_${step}_before" "$(repo_bytes pgbr)"
    m "pgbr_$step" "${PGBR[@]}" --type=$type backup
    fact "pgbr_${step}_after" "$(repo_bytes pgbr)"
    "${PSQL[@]}" -c "CHECKPOINT"
    "${TOOLS[@]}" pagediff "$W/snap" "$W/pgdata" "$HEAP" "$INDEX" "$W/pd/$step.json"
}
# changes ROUND: UPDATES random single-row updates, checkpointed 3 s before the backups.
changes() {
    echo "$UPDATES random updates..." >&2
    PGOPTIONS="-c synchronous_commit=off" "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -n -c 1 \
        -t "$UPDATES" -f "$W/update.sql" -D nrows="$NROWS" --random-seed=$((SEED + $1)) postgres >/dev/null 2>>"$W/pgbench.log"
    "${PSQL[@]}" -c "CHECKPOINT"
    sleep 3
}
last_cellar() { head -n1 "$W/m/cellar_$1.out"; }
last_pgbr() {
    "${PGBR[@]}" info --output=json | python3 -c "import json, sys; print(json.load(sys.stdin)[0]['backup'][-1]['label'])"
}
# restores STEP CELLAR_ID PGBR_LABEL
restores() {
    local step=$1 id=$2 label=$3
    local i name
    for i in $(seq 1 "$REPEAT"); do
        name=$step$([ "$i" = 1 ] || echo "#$i")
        rm -rf "$W/r-cellar" "$W/r-pgbr"
        mkdir -p "$W/r-cellar" "$W/r-pgbr"
        own "$W/r-cellar" "$W/r-pgbr"
        sync
        m "cellar_$name" "${AS[@]}" "$W/bin/restore" --repo "$W/repo-pgcellar" --server bench -q --jobs 2 \
            --backup "$id" "$W/r-cellar/data"
        sync
        m "pgbr_$name" "${PGBR[@]}" --pg1-path="$W/r-pgbr/data" --process-max=2 --set="$label" restore
    done
    fact "restored_${step}_cellar" "$(du -sb "$W/r-cellar/data" | cut -f1)"
    fact "restored_${step}_pgbr" "$(du -sb "$W/r-pgbr/data" | cut -f1)"
    rm -rf "$W/r-cellar" "$W/r-pgbr"
}

make_cluster "$SIZE_MB"
fact commit "$COMMIT"; fact dirty "$DIRTY"; fact size_mb "$SIZE_MB"; fact updates "$UPDATES"
fact rounds "$ROUNDS"; fact scale "$SCALE"; fact table_rows "$NROWS"; fact table_bytes "$TABLE_BYTES"
fact data_bytes "$DATA_BYTES"; fact pgbr_version "$(pgbackrest version | cut -d' ' -f2)"

echo "full backups..." >&2
backups full --full
CELLAR_FULL=$(last_cellar full); PGBR_FULL=$(last_pgbr)
fact format "$([ -d "$W/repo-pgcellar/bench/objects" ] && echo 2 || echo 1)"
changes 0
echo "incrementals after the updates..." >&2
backups incr1
sleep 3
echo "no-change incrementals..." >&2
backups incr0
echo "restores of the full backups..." >&2
restores restore_full "$CELLAR_FULL" "$PGBR_FULL"
if [ "$ROUNDS" -gt 0 ]; then
    for i in $(seq 1 "$ROUNDS"); do
        changes "$i"
        echo "incrementals, round $i of $ROUNDS..." >&2
        backups "r$i"
    done
    echo "restores of the last incrementals..." >&2
    restores restore_last "$(last_cellar "r$ROUNDS")" "$(last_pgbr)"
fi
if [ "$RSS_SIZE_MB" -gt 0 ]; then
    echo "second size for peak RSS: $RSS_SIZE_MB MB..." >&2
    drop_cluster
    make_cluster "$RSS_SIZE_MB"
    fact size2_mb "$RSS_SIZE_MB"; fact data2_bytes "$DATA_BYTES"
    backups full_s2 --full
    restores restore_full_s2 "$(last_cellar full_s2)" "$(last_pgbr)"
fi

"${TOOLS[@]}" report "$W" "${BENCH_JSON:-}"
