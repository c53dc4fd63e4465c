#!/usr/bin/env bash
# The benchmark suite of dispatcher: builds --release, generates registries, runs each
# workload side by side with its baseline in one run, and prints a table of medians,
# min–max, ratios, targets and pass/fail. See bench/README.md for what each workload does.
#
#   bench/run.sh            # the full suite (several minutes)
#   bench/run.sh --quick    # tiny sizes: a smoke run that checks the machinery, not the targets
#   bench/run.sh --only 3   # one workload (1-6); may be repeated
#   bench/run.sh --keep     # keep the work directory (registries, logs) for inspection
#   bench/run.sh --compare DIR  # W1 also with the dispatcher binaries in DIR (another build),
#                               # interleaved in the same runs: before/after figures
#
# Not for CI: timings on shared machines are noisy. Only the --quick run may go there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
quick=0
keep=0
compare=
only=()
while (($#)); do
    case $1 in
        --quick) quick=1 ;;
        --keep) keep=1 ;;
        --only) shift; only+=("${1:?--only needs a workload number}") ;;
        --only=*) only+=("${1#--only=}") ;;
        --compare) shift; compare=${1:?--compare needs a directory} ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

wanted() {
    ((${#only[@]} == 0)) && return 0
    local w
    for w in "${only[@]}"; do [[ $w == "$1" ]] && return 0; done
    return 1
}

say() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }

# ----- tools --------------------------------------------------------------------------------

# hyperfine and GNU time are optional: install them when we can, degrade when we cannot.
install_pkg() {
    local pkg=$1
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        apt-get install -y "$pkg" >/dev/null 2>&1 || true
    fi
}
command -v hyperfine >/dev/null || install_pkg hyperfine
[[ -x /usr/bin/time ]] || install_pkg time
have_hyperfine=0
command -v hyperfine >/dev/null && have_hyperfine=1
have_time=0
[[ -x /usr/bin/time ]] && have_time=1
command -v python3 >/dev/null || { echo "run.sh: python3 is required" >&2; exit 1; }

say "building (release)"
(cd "$root" && cargo build --release --quiet && cargo bench --no-run --quiet 2>/dev/null) >&2
bin=$root/target/release/dispatcher
if [[ -n $compare ]]; then
    compare=$(cd "$compare" && pwd)/dispatcher
    [[ -x $compare ]] || { echo "run.sh: no dispatcher in --compare's directory" >&2; exit 2; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dispatcher-bench.XXXXXX")
cleanup() {
    # Stop what this script started (recorded pids only), then remove the work dirs.
    local pid
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    if ((keep)); then
        echo "work directories kept: $work ${scratch_dirs[*]}" >&2
    else
        rm -rf "$work" "${scratch_dirs[@]}"
    fi
}
started=()
scratch_dirs=() # work directories outside $work (on tmpfs)
trap cleanup EXIT
samples=$work/samples
mkdir -p "$samples"
table=$work/table.tsv
: >"$table"

if ((quick)); then
    W1_TASKS=40 RUNS=3 W2_SPECS=10 W2_TASKS=100 W3_FLIPS=8 W3_TASKS=20 W4_RUNNERS=10
    W4_BLOCKED=200 W4_SLEEP=20 W4_WINDOW=3 W5_TASKS=500 W6_QUEUED=1,000 W6_POOLS=5
else
    W1_TASKS=1000 RUNS=5 W2_SPECS=100 W2_TASKS=1000 W3_FLIPS=50 W3_TASKS=1000 W4_RUNNERS=200
    W4_BLOCKED=10000 W4_SLEEP=60 W4_WINDOW=20 W5_TASKS=10,000 W6_QUEUED=100,000 W6_POOLS=50
fi

gen() { python3 "$here/gen.py" "$@"; }
now_ns() { date +%s%N; }

# Appends one sample (milliseconds) to a named series.
sample() { echo "$2" >>"$samples/$1"; }

# "median min max n" of a series, in milliseconds. A series filled from a cargo bench holds
# only its min, median and max, with the bench's sample count in SERIES.n.
stats() {
    local n=
    [[ -f $samples/$1.n ]] && n=$(cat "$samples/$1.n")
    sort -g "$samples/$1" | awk -v n="$n" '{v[NR]=$1} END {
        if (NR == 0) { print "nan nan nan 0"; exit }
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
        printf "%.6f %.6f %.6f %d\n", m, v[1], v[NR], (n == "" ? NR : n) }'
}

# Human form of a duration in ms.
fmt_ms() {
    awk -v x="$1" 'BEGIN {
        if (x == "nan" || x == "") print "-"
        else if (x >= 1000) printf "%.2f s", x / 1000
        else if (x >= 1) printf "%.1f ms", x
        else printf "%.1f µs", x * 1000 }'
}

# row WORKLOAD SERIES BASE_SERIES TARGET_KIND TARGET [UNIT]
#   TARGET_KIND: ratio (dispatcher/baseline <= TARGET), max (dispatcher median <= TARGET ms),
#   info (no target). BASE_SERIES may be "-". UNIT "MB" prints values as megabytes.
row() {
    local name=$1 series=$2 base=$3 kind=$4 target=$5 unit=${6:-ms}
    local m lo hi n bm blo bhi bn ratio verdict d b tgt
    read -r m lo hi n < <(stats "$series")
    if [[ $base != - ]]; then read -r bm blo bhi bn < <(stats "$base"); else bm=nan; fi
    show() { if [[ $unit == MB ]]; then awk -v x="$1" 'BEGIN{printf "%.1f MB", x}'; else fmt_ms "$1"; fi; }
    d="$(show "$m") ($(show "$lo")–$(show "$hi"), n=$n)"
    if [[ $bm != nan ]]; then
        b="$(show "$bm") ($(show "$blo")–$(show "$bhi"), n=$bn)"
        ratio=$(awk -v a="$m" -v b="$bm" 'BEGIN{ if (b > 0) printf "%.2f×", a / b; else print "-" }')
    else
        b="-" ratio="-"
    fi
    case $kind in
        ratio) tgt="≤ ${target}× baseline"
               verdict=$(awk -v a="$m" -v b="$bm" -v t="$target" 'BEGIN{print (b > 0 && a / b <= t) ? "pass" : "FAIL"}') ;;
        max) tgt="≤ $(show "$target")"
             verdict=$(awk -v a="$m" -v t="$target" 'BEGIN{print (a <= t) ? "pass" : "FAIL"}') ;;
        *) tgt="(reported)" verdict="-" ;;
    esac
    ((quick)) && [[ $verdict != - ]] && verdict="($verdict)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$d" "$b" "$ratio" "$tgt" "$verdict" >>"$table"
}

# Runs a cargo bench target and files its RESULT lines as one-sample-per-stat series
# (median, min and max are the bench's own; n is kept in a side file).
#   cargo_bench NAME [SUFFIX [ARG...]]: SUFFIX (if any) is appended to the series' names, the
#   ARGs go to the bench (the same bench run twice, say, in two directories).
cargo_bench() {
    local name=$1 suffix=${2:-} line out
    local args=()
    ((quick)) && args+=(--quick)
    (($# > 2)) && args+=("${@:3}")
    out=$work/bench-$name${suffix:+-$suffix}.txt
    (cd "$root" && cargo bench --quiet --bench "$name" -- "${args[@]}") >"$out" 2>&1 ||
        { cat "$out" >&2; return 1; }
    grep -v '^RESULT' "$out" | sed 's/^/   /' >&2
    while IFS=$'\t' read -r _ series median min max n; do
        series=$series${suffix:+.$suffix}
        # Stored so that `stats` gives back the bench's median, min and max.
        printf '%s\n%s\n%s\n' "$min" "$median" "$max" >"$samples/$series"
        echo "$n" >"$samples/$series.n"
    done < <(grep '^RESULT' "$out")
}

# /usr/bin/time -v fields of a finished run: "elapsed_ms maxrss_kb user_s sys_s".
time_fields() {
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; el = s * 1000 }
        /Maximum resident set size/ { rss = $2 }
        /User time/ { u = $2 } /System time/ { sy = $2 }
        END { printf "%.1f %d %s %s\n", el, rss, u, sy }' "$1"
}

# ----- W1: throughput -----------------------------------------------------------------------

w1() {
    local n=$W1_TASKS dir=$work/w1 layout specs tasks i t0 t1 rc fs run places=(disk) shm=
    say "W1 throughput: $n tasks, runner true, concurrency 8 (runs: $RUNS, interleaved)"
    mkdir -p "$dir"
    # Two layouts: all tasks in one taskset (every claim rewrites the whole file) and ten.
    for layout in 1 10; do
        specs=$layout tasks=$((n / layout))
        gen "$dir/tmpl-$layout" --specs "$specs" --tasks "$tasks" --state ready
    done
    cat >"$dir/w1.toml" <<EOF
[dispatcher]
state_dir = "state"
max_global_concurrency = 8

[task_registry]
dir = "registry"

[agent_pools.default]
command = ["true"]
max_concurrency = 8
EOF
    # The same runs with the state dir and registry on tmpfs, where there is one: what the
    # file system costs, apart from the dispatcher.
    if [[ -d /dev/shm && -w /dev/shm ]]; then
        shm=$(mktemp -d /dev/shm/dispatcher-bench.XXXXXX)
        scratch_dirs+=("$shm")
        places+=(tmpfs)
    fi
    # Every run gets fresh directories and none is removed before the workload ends: ext4
    # without a journal (this machine's disk) skips, one by one, the inodes freed in the last
    # minutes when it allocates new ones, so removing a run's thousands of files right before
    # the next run would bill that run for the benchmark's own clean-up.
    fresh() { # fresh PLACE LAYOUT: sets $run to a new directory with registry/ and the config
        local base=$dir
        [[ $1 == tmpfs ]] && base=$shm
        run=$(mktemp -d "$base/run.XXXXXX")
        cp -r "$dir/tmpl-$2" "$run/registry"
        cp "$dir/w1.toml" "$run/dispatcher.toml"
    }
    timed_run() { # timed_run BIN SERIES PLACE LAYOUT: one run in fresh directories, sampled
        local t0 t1 rc=0
        fresh "$3" "$4"
        t0=$(now_ns)
        "$1" --config "$run/dispatcher.toml" run --until-idle 2>"$run/run.log" || rc=$?
        t1=$(now_ns)
        if ((rc != 0)); then
            note "$1 exited $rc:"; tail -5 "$run/run.log" >&2; return 1
        fi
        sample "$2" "$(((t1 - t0) / 1000))e-3"
    }
    for ((i = 1; i <= RUNS; i++)); do
        for fs in "${places[@]}"; do
            for layout in 1 10; do
                # With --compare, the two builds take turns going first (ABBA; with an odd
                # number of runs this build goes first once more): on this disk a run pays
                # for the files the run before it removed.
                if [[ -n $compare ]] && ((i % 2 == 0)); then
                    timed_run "$compare" "w1.cmp.$layout.$fs" "$fs" "$layout" || return 1
                    timed_run "$bin" "w1.disp.$layout.$fs" "$fs" "$layout" || return 1
                else
                    timed_run "$bin" "w1.disp.$layout.$fs" "$fs" "$layout" || return 1
                    [[ -z $compare ]] || timed_run "$compare" "w1.cmp.$layout.$fs" "$fs" "$layout" || return 1
                fi
            done
        done
        t0=$(now_ns)
        seq "$n" | xargs -P8 -n1 true
        t1=$(now_ns)
        sample w1.xargs "$(((t1 - t0) / 1000))e-3"
        # The floor of any design with one process between the scheduler and each runner
        # (the dispatcher's supervisor, which lets a runner outlive a dispatcher crash): two
        # execs per task.
        t0=$(now_ns)
        seq "$n" | xargs -P8 -n1 env true
        t1=$(now_ns)
        sample w1.xargs.env "$(((t1 - t0) / 1000))e-3"
    done
    # The protocol was on: every task claimed, run and recorded, with its events.
    local done_count assigned
    done_count=$(python3 -c 'import json,glob,sys
print(sum(t["state"] == "done" for f in glob.glob(sys.argv[1] + "/tasksets/*/taskset.json") for t in json.load(open(f))["tasks"]))' "$run/registry")
    assigned=$(cat "$run"/registry/events/*/events.jsonl | grep -c '"TaskAssigned"' || true)
    note "last run: $done_count tasks done, $assigned TaskAssigned events"
    if ((have_time)); then
        fresh disk 1
        /usr/bin/time -v -o "$dir/time.txt" "$bin" --config "$run/dispatcher.toml" run --until-idle 2>/dev/null
        read -r el rss u sy < <(time_fields "$dir/time.txt")
        note "one extra run (1 taskset, disk): ${el} ms wall, user ${u} s, sys ${sy} s, max RSS $((rss / 1024)) MB"
    fi
    if ((have_hyperfine)); then
        note "hyperfine cross-check (not interleaved; 1 taskset, disk):"
        # --prepare moves the last run aside rather than deleting it, for the reason above.
        local hf=$dir/hyperfine
        mkdir -p "$hf/old"
        hyperfine --style basic --runs "$RUNS" --export-json "$dir/hyperfine.json" \
            --prepare "if [ -d '$hf/run' ]; then mv '$hf/run' '$hf/old/'\$(date +%s%N); fi; mkdir '$hf/run' && cp -r '$dir/tmpl-1' '$hf/run/registry' && cp '$dir/w1.toml' '$hf/run/dispatcher.toml'" \
            "'$bin' --config '$hf/run/dispatcher.toml' run --until-idle 2>/dev/null" \
            "seq $n | xargs -P8 -n1 true" 2>&1 | grep -E 'Time|Range|faster|±' | sed 's/^/   /' >&2 || true
    fi
    row "W1 throughput, 1 taskset × $n" w1.disp.1.disk w1.xargs ratio 1.5
    row "W1 throughput, 10 tasksets × $((n / 10))" w1.disp.10.disk w1.xargs ratio 1.5
    if [[ -n $shm ]]; then
        row "W1, 1 taskset, state and registry on tmpfs" w1.disp.1.tmpfs w1.xargs ratio 1.5
        row "W1, 10 tasksets, on tmpfs" w1.disp.10.tmpfs w1.xargs ratio 1.5
    fi
    row "W1 floor: two execs per task (xargs env true)" w1.xargs.env w1.xargs info -
    # The floor of this design (benches/w1_floor.rs): a forked supervisor per task with its
    # files and `true`, alone and with the registry's durable writes per batch (issue #3's
    # rules), each next to xargs in the same run. On the disk it shows what no dispatcher with
    # these rules can beat there.
    say "W1 floor (benches/w1_floor.rs), on ${places[*]}"
    local place floor_dir
    for place in "${places[@]}"; do
        floor_dir=$dir/floor
        [[ $place == tmpfs ]] && floor_dir=$shm/floor
        mkdir -p "$floor_dir"
        cargo_bench w1_floor "$place" --dir "$floor_dir" || return 1
        row "W1 floor, $place: forked supervisor, attempt files, true" "w1.floor.design.$place" "w1.floor.xargs.$place" info -
        row "W1 floor, $place: + durable registry writes, 1 taskset" "w1.floor.durable.1.$place" "w1.floor.xargs.$place" info -
        row "W1 floor, $place: + durable registry writes, 10 tasksets" "w1.floor.durable.10.$place" "w1.floor.xargs.$place" info -
    done
    if [[ -n $compare ]]; then
        for place in "${places[@]}"; do
            for layout in 1 10; do
                row "W1 $layout taskset(s), $place: the --compare build" "w1.cmp.$layout.$place" w1.xargs info -
                row "W1 $layout taskset(s), $place: this build / the --compare build" "w1.disp.$layout.$place" "w1.cmp.$layout.$place" info -
            done
        done
    fi
}

# ----- W2: scale of the registry ------------------------------------------------------------

w2() {
    local dir=$work/w2 i t0 t1 el rss u sy
    say "W2 registry scale: $W2_SPECS tasksets × $W2_TASKS tasks"
    cargo_bench registry_scan
    row "W2 poll, nothing changed" w2.poll_unchanged - max 5
    row "W2 poll, one taskset changed (vs registry /10)" w2.poll_one_changed \
        w2.small.poll_one_changed ratio 1.5
    mkdir -p "$dir"
    gen "$dir/registry" --specs "$W2_SPECS" --tasks "$W2_TASKS" --state done
    cat >"$dir/dispatcher.toml" <<EOF
[dispatcher]
state_dir = "state"

[task_registry]
dir = "registry"

[agent_pools.default]
command = ["true"]
EOF
    # Start-up: `run --until-idle` on an all-done registry is the first full read and the
    # exit. Baseline: Python reading and parsing the same files (what NecroCode pays).
    for ((i = 1; i <= RUNS; i++)); do
        rm -rf "$dir/state"
        if ((have_time)); then
            t0=$(now_ns)
            /usr/bin/time -v -o "$dir/time.txt" "$bin" --config "$dir/dispatcher.toml" run --until-idle 2>"$dir/run.log"
            t1=$(now_ns)
            read -r el rss u sy < <(time_fields "$dir/time.txt")
            sample w2.startup "$(((t1 - t0) / 1000))e-3"
            sample w2.rss "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
            t0=$(now_ns)
            /usr/bin/time -v -o "$dir/time-py.txt" python3 -c 'import json,glob,sys
for f in glob.glob(sys.argv[1] + "/tasksets/*/taskset.json"): json.load(open(f))' "$dir/registry"
            t1=$(now_ns)
            read -r el rss u sy < <(time_fields "$dir/time-py.txt")
            sample w2.startup.py "$(((t1 - t0) / 1000))e-3"
            sample w2.rss.py "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
        else
            t0=$(now_ns)
            "$bin" --config "$dir/dispatcher.toml" run --until-idle 2>"$dir/run.log"
            t1=$(now_ns)
            sample w2.startup "$(((t1 - t0) / 1000))e-3"
            t0=$(now_ns)
            python3 -c 'import json,glob,sys
for f in glob.glob(sys.argv[1] + "/tasksets/*/taskset.json"): json.load(open(f))' "$dir/registry"
            t1=$(now_ns)
            sample w2.startup.py "$(((t1 - t0) / 1000))e-3"
        fi
    done
    row "W2 monitor first full read (library)" w2.first_read - info 0
    row "W2 start-up: run --until-idle, all done (vs python json.load)" w2.startup w2.startup.py max 1000
    if ((have_time)); then
        row "W2 peak RSS (vs python json.load)" w2.rss w2.rss.py max 100 MB
    fi
}

# ----- W3: latency --------------------------------------------------------------------------

# One latency run: starts `dispatcher run` with the given poll interval line, lets the writer
# flip W3_FLIPS tasks, and files each ready → runner-start latency in SERIES.
w3_run() {
    local series=$1 poll=$2 dir=$work/w3-$1 pid t_end
    mkdir -p "$dir"
    gen "$dir/registry" --specs 1 --tasks "$W3_TASKS" --state blocked --prefix lat
    cat >"$dir/dispatcher.toml" <<EOF
[dispatcher]
state_dir = "state"
$poll

[task_registry]
dir = "registry"

[agent_pools.default]
command = ["sh", "-c", "echo {task_id} \$(date +%s%N) >> '$dir/ledger'"]
max_concurrency = 8
EOF
    : >"$dir/ledger"
    "$bin" --config "$dir/dispatcher.toml" run 2>"$dir/run.log" &
    pid=$!
    started+=("$pid")
    # Up when its first scan is done (it logs "registry read").
    t_end=$((SECONDS + 30))
    until grep -q "registry read" "$dir/run.log"; do
        ((SECONDS < t_end)) || { note "dispatcher did not start"; tail -5 "$dir/run.log" >&2; return 1; }
        sleep 0.05
    done
    python3 "$here/writer.py" "$dir/registry" lat-000 "$W3_FLIPS" 200 >"$dir/ready.txt"
    t_end=$((SECONDS + 30))
    while (($(wc -l <"$dir/ledger") < W3_FLIPS)) && ((SECONDS < t_end)); do sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$dir/ready.txt" "$dir/ledger" >>"$samples/$series" <<'EOF'
import sys
ready = dict(line.split() for line in open(sys.argv[1]))
for line in open(sys.argv[2]):
    tid, ns = line.split()
    if tid in ready:
        print((int(ns) - int(ready[tid])) / 1e6)
EOF
    note "$series: $(wc -l <"$samples/$series") of $W3_FLIPS runners started"
}

# pNN of a series, in ms.
pct() {
    sort -g "$samples/$1" | awk -v p="$2" '{v[NR]=$1} END { i = int((NR - 1) * p / 100 + 0.5) + 1; print v[i] }'
}

w3() {
    say "W3 latency: $W3_FLIPS tasks made ready by an external writer, ~200 ms apart"
    w3_run w3.default ""
    w3_run w3.poll20ms 'poll_interval = "20ms"'
    # The p50 and p99 rows carry the percentile as their "median", with the full range.
    local s p
    for s in w3.default w3.poll20ms; do
        read -r _ lo hi n < <(stats "$s")
        for p in 50 99; do
            printf '%s\n%s\n%s\n' "$lo" "$(pct "$s" "$p")" "$hi" >"$samples/$s.p$p"
            echo "$n" >"$samples/$s.p$p.n"
        done
    done
    row "W3 ready → runner start, p50 (vs poll 20ms)" w3.default.p50 w3.poll20ms.p50 max 50
    row "W3 ready → runner start, p99 (vs poll 20ms)" w3.default.p99 w3.poll20ms.p99 max 250
}

# ----- W4: idle cost ------------------------------------------------------------------------

# CPU ticks (utime + stime) of one process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Sum of ticks of this run's supervisors and spawn server: the processes whose command line
# holds __spawn-server (forked supervisors keep the server's) or __supervise, and whose
# working directory is under our work dir (a runner's, or the dir of the last one started).
supervisor_ticks() {
    local total=0 p cmd cwd
    for p in /proc/[0-9]*; do
        cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        [[ $cmd == *__spawn-server* || $cmd == *__supervise* ]] || continue
        cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
        [[ $cwd == "$work"* ]] || continue
        total=$((total + $(ticks "${p#/proc/}")))
    done
    echo "$total"
}

w4() {
    local dir=$work/w4 pid t_end hz a0 s0 b0 a1 s1 b1 xpid window=$W4_WINDOW
    say "W4 idle: $W4_RUNNERS runners sleeping, $W4_BLOCKED blocked tasks, ${window} s window"
    mkdir -p "$dir"
    gen "$dir/registry" --specs 1 --tasks "$W4_RUNNERS" --state ready --prefix run
    gen "$dir/registry" --specs 1 --tasks "$W4_BLOCKED" --state blocked --deps gate --gate --prefix held
    cat >"$dir/dispatcher.toml" <<EOF
[dispatcher]
state_dir = "state"
max_global_concurrency = $W4_RUNNERS

[task_registry]
dir = "registry"

[agent_pools.default]
command = ["sh", "-c", "echo {task_id} >> '$dir/ledger'; exec sleep $W4_SLEEP"]
max_concurrency = $W4_RUNNERS
EOF
    : >"$dir/ledger"
    hz=$(getconf CLK_TCK)
    "$bin" --config "$dir/dispatcher.toml" run 2>"$dir/run.log" &
    pid=$!
    started+=("$pid")
    t_end=$((SECONDS + 60))
    while (($(wc -l <"$dir/ledger") < W4_RUNNERS)); do
        ((SECONDS < t_end)) || { note "only $(wc -l <"$dir/ledger") runners started"; break; }
        sleep 0.2
    done
    note "all $W4_RUNNERS runners started after $(grep -c . "$dir/ledger") lines; settling 2 s"
    sleep 2
    a0=$(ticks "$pid") s0=$(supervisor_ticks)
    sleep "$window"
    a1=$(ticks "$pid") s1=$(supervisor_ticks)
    # Ctrl-C twice: drain and stop the sleeping runners now instead of waiting them out.
    kill -TERM "$pid" 2>/dev/null || true
    sleep 0.5
    kill -TERM "$pid" 2>/dev/null || true
    # The baseline: the same sleeping runners under xargs, measured the same way.
    seq "$W4_RUNNERS" | xargs -P"$W4_RUNNERS" -n1 sh -c "exec sleep $((window + 4))" sh &
    xpid=$!
    started+=("$xpid")
    sleep 2
    b0=$(ticks "$xpid")
    sleep "$window"
    b1=$(ticks "$xpid")
    wait "$xpid" 2>/dev/null || true
    # The drain stops the sleeping runners; give it their grace period.
    t_end=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < t_end)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # "% of one core" is stored as the sample value so the table shows it in its column.
    local pd ps px
    pd=$(awk -v d=$((a1 - a0)) -v hz="$hz" -v w="$window" 'BEGIN{printf "%.3f", 100 * d / hz / w}')
    ps=$(awk -v d=$((s1 - s0)) -v hz="$hz" -v w="$window" 'BEGIN{printf "%.3f", 100 * d / hz / w}')
    px=$(awk -v d=$((b1 - b0)) -v hz="$hz" -v w="$window" 'BEGIN{printf "%.3f", 100 * d / hz / w}')
    note "dispatcher: $((a1 - a0)) ticks in ${window} s = ${pd}% of one core;" \
        "its $W4_RUNNERS supervisors together: $((s1 - s0)) ticks = ${ps}%; xargs: ${px}%"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "W4 idle CPU, dispatcher process (vs xargs)" "${pd}% of a core" \
        "${px}%" "-" "≤ 1%" "$(awk -v x="$pd" -v q="$quick" 'BEGIN{v = (x <= 1) ? "pass" : "FAIL"; print q ? "(" v ")" : v}')" >>"$table"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "W4 idle CPU, all supervisors together" "${ps}% of a core" \
        "-" "-" "(reported)" "-" >>"$table"
}

# ----- W5, W6: micro-benchmarks -------------------------------------------------------------

w5() {
    say "W5 claim cost"
    cargo_bench claim
    row "W5 claim 1 task ($W5_TASKS-task taskset)" w5.claim_1 - info 0
    row "W5 claim 8 in one write (vs 8 writes)" w5.claim_8_batched w5.claim_8_separate info 0
    row "W5 claim 8 in one write (vs claim 1)" w5.claim_8_batched w5.claim_1 ratio 1.5
    row "W5 claim 1 task as the core does (vs a plain update)" w5.claim_1_held w5.claim_1 info 0
}

w6() {
    say "W6 scheduler decision"
    cargo_bench scheduler
    row "W6 plan, $W6_QUEUED queued, $W6_POOLS pools" w6.plan_common - max 1
    row "W6 plan, every pool full but one, its tasks last" w6.plan_worst - max 1
    row "W6 plan, footprints hold back all but the first tasks" w6.plan_footprints - info 0
}

# ----- the run ------------------------------------------------------------------------------

say "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); hyperfine: $have_hyperfine; /usr/bin/time: $have_time; quick: $quick"
for w in 1 2 3 4 5 6; do
    wanted "$w" && "w$w"
done

echo
{
    printf 'workload\tdispatcher median (min–max)\tbaseline median (min–max)\tratio\ttarget\tresult\n'
    cat "$table"
} | column -t -s $'\t'
((quick)) && echo "(--quick: tiny sizes; verdicts in parentheses are not meaningful)"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
