#!/usr/bin/env bash
# Scale-out check on a real Slurm (issue #5 item 6).
#
# Brings up a throwaway single-node Slurm on this machine (munged, slurmctld and slurmd
# started directly as daemons, no systemd, everything under one temp dir), submits the job
# array that `ddrep slurm FILE --array 4` writes, waits for its tasks, runs the same grid
# single-process into a second results dir and checks that the two stores hold the same
# cells byte for byte (cell.json up to its wall-clock fields). Then shuts Slurm and munge
# down and removes the temp dir.
#
# Usage: bash tools/slurm_check.sh [OVERRIDE ...]   (default overrides: seeds=[0])
# Env:   DDREP_BIN              ddrep binary (default: $CARGO_TARGET_DIR/release/ddrep,
#                               CARGO_TARGET_DIR defaulting to ~/.cache/ddrep-target)
#        SLURM_CHECK_FILE       experiment YAML (default: experiments/demo_table1.yaml)
#        SLURM_CHECK_ARRAY      number of array tasks (default: 4)
#        SLURM_CHECK_TIMEOUT    seconds to wait for the array (default: 600)
#        SLURM_CHECK_KEEP=1     keep the temp dir (logs, both stores) for inspection
# Needs root (slurmd runs as root) and, when slurm-wlm/munge are missing, apt-get: it
# installs them (the packages stay installed; their services are not started or left running).
# Exit: 0 PASS, 1 FAIL, 77 SKIP (cannot install or run Slurm here), 2 usage error.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PATH="$PATH:/usr/sbin:/sbin"

FILE=${SLURM_CHECK_FILE:-experiments/demo_table1.yaml}
ARRAY=${SLURM_CHECK_ARRAY:-4}
TIMEOUT=${SLURM_CHECK_TIMEOUT:-600}
if [ $# -gt 0 ]; then OVERRIDES=("$@"); else OVERRIDES=('seeds=[0]'); fi
# Top-level cell.json fields that legitimately differ between two runs of the same cell.
VOLATILE='^  "(wall_seconds|sampler_seconds)": '

T=""            # temp dir
POLICY_RC=""    # policy-rc.d we created for the install (removed again)
JOB=""          # Slurm array job id
START=$(date +%s)

log() { echo "slurm_check: $*"; }
skip() { log "$*"; echo "SLURM CHECK SKIPPED: $*"; exit 77; }
dump_logs() {
  [ -n "$T" ] && [ -d "$T/log" ] || return 0
  local f
  for f in "$T"/log/*; do
    [ -f "$f" ] || continue
    echo "----- ${f#"$T"/} (last 40 lines)"
    tail -n 40 "$f"
  done
  return 0
}
fail() { log "$*"; dump_logs; echo "SLURM CHECK FAIL: $*"; exit 1; }

pid_of() { [ -f "$1" ] && cat "$1" 2>/dev/null; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# Wait up to $2 seconds for pid $1 to exit, then TERM, then KILL it.
reap() {
  local pid=$1 i
  alive "$pid" || return 0
  for ((i = 0; i < $2 * 10; i++)); do alive "$pid" || return 0; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  return 0
}

# Pids (not this shell) with an open file or working directory under $T.
stray_pids() {
  local d p f
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = $$ ] && continue
    for f in "$d/cwd" "$d"/fd/*; do
      case "$(readlink "$f" 2>/dev/null)" in "$T"/*) echo "$p"; break ;; esac
    done
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; fi
  if [ -n "$T" ] && [ -d "$T" ]; then
    local ctld slurmd munged i
    ctld=$(pid_of "$T/run/slurmctld.pid")
    slurmd=$(pid_of "$T/run/slurmd.pid")
    munged=$(pid_of "$T/run/munged.pid")
    if alive "$ctld"; then
      if [ -n "$JOB" ] && [ -n "$(squeue -h -j "$JOB" 2>/dev/null)" ]; then
        # Cancel what is left and let its steps finish before the daemons go, or the
        # slurmstepds are orphaned retrying to reach them.
        timeout 10 scancel "$JOB" 2>/dev/null
        for ((i = 0; i < 300; i++)); do [ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] && break; sleep 0.1; done
      fi
      # Stops slurmctld and every slurmd of the cluster (ours only: SLURM_CONF is ours).
      timeout 15 scontrol shutdown >/dev/null 2>&1
    elif alive "$slurmd"; then
      kill -TERM "$slurmd" 2>/dev/null
    fi
    reap "$ctld" 15
    reap "$slurmd" 15
    if alive "$munged"; then
      timeout 10 munged --stop --socket="$T/run/munge.socket" >/dev/null 2>&1
      reap "$munged" 5
    fi
    # Anything still holding a file or its working directory in the temp dir was started
    # by this check (slurmstepd, a job's ddrep): end it by pid.
    local p strays=()
    for p in $(stray_pids); do strays+=("$p"); done
    if [ ${#strays[@]} -gt 0 ]; then
      log "ending leftover processes ${strays[*]}"
      kill -TERM "${strays[@]}" 2>/dev/null
      for p in "${strays[@]}"; do reap "$p" 5; done
    fi
    if [ "${SLURM_CHECK_KEEP:-0}" = 1 ]; then
      log "kept $T"
    else
      rm -rf "$T"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- 0. Where this can run, the ddrep binary and the experiment
[ "$(uname -s)" = Linux ] || skip "needs Linux (found $(uname -s))"
[ "$(id -u)" = 0 ] || skip "needs root: slurmd runs as root and the packages are installed with apt-get"
if [ -z "${DDREP_BIN:-}" ]; then
  DDREP_BIN="${CARGO_TARGET_DIR:-$HOME/.cache/ddrep-target}/release/ddrep"
fi
if [ ! -x "$DDREP_BIN" ]; then
  echo "slurm_check: no ddrep binary at $DDREP_BIN (build it with cargo build --release or set DDREP_BIN)"
  exit 2
fi
DDREP_BIN=$(readlink -f "$DDREP_BIN")
[ -f "$FILE" ] || { echo "slurm_check: no experiment file $FILE"; exit 2; }
FILE=$(readlink -f "$FILE")

# ---- 1. Slurm and munge
need=(munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol scancel)
missing() { local c; for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || return 0; done; return 1; }
if missing; then
  command -v apt-get >/dev/null 2>&1 || skip "slurm-wlm/munge are not installed and there is no apt-get to install them"
  log "installing slurm-wlm and munge with apt-get"
  # Keep the packages' services from starting (no systemd here, and we run our own daemons).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    POLICY_RC=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod 755 "$POLICY_RC"
  fi
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >"$1" 2>&1; }
  ilog=$(mktemp)
  if ! apt_install "$ilog"; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$ilog" 2>&1
    apt_install "$ilog" || { tail -n 20 "$ilog"; rm -f "$ilog"; skip "apt-get could not install slurm-wlm and munge"; }
  fi
  rm -f "$ilog"
  if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; POLICY_RC=""; fi
  missing && skip "slurm-wlm/munge installed but one of ${need[*]} is still missing"
fi
log "$(slurmctld -V 2>/dev/null), munge $(munged -V 2>/dev/null | awk '{print $1}'), ddrep $DDREP_BIN"

# ---- 2. A single-node cluster in a temp dir
t_up=$(date +%s)
T=$(mktemp -d /tmp/ddrep-slurm-check.XXXXXX) || fail "mktemp failed"
chmod 755 "$T"   # munged wants o+x on every directory above its socket
mkdir -p "$T/munge" "$T/run" "$T/state" "$T/spool" "$T/log" "$T/work"
chmod 700 "$T/munge"
chmod 755 "$T/run" "$T/state" "$T/spool" "$T/log"

mungekey --create --keyfile="$T/munge/munge.key" >/dev/null 2>&1 ||
  { dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none && chmod 600 "$T/munge/munge.key"; } ||
  fail "cannot create a munge key"
munged --key-file="$T/munge/munge.key" --socket="$T/run/munge.socket" --pid-file="$T/run/munged.pid" \
  --log-file="$T/log/munged.log" --seed-file="$T/munge/munged.seed" >"$T/log/munged.out" 2>&1 ||
  fail "munged did not start: $(cat "$T/log/munged.out")"
munge -S "$T/run/munge.socket" -n 2>/dev/null | unmunge -S "$T/run/munge.socket" >/dev/null 2>&1 ||
  fail "munge round trip failed"

# Two free TCP ports for slurmctld and slurmd (a system Slurm may hold 6817/6818).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    [ "$p" != "${1:-}" ] && ! port_busy "$p" && { echo "$p"; return 0; }
  done
  return 1
}
CTLD_PORT=$(free_port) || fail "no free port"
SLURMD_PORT=$(free_port "$CTLD_PORT") || fail "no free port"

H=$(hostname -s)
# This machine's topology as slurmd sees it (sockets/cores/threads/memory), so the node is
# not drained for a mismatch; fall back to nproc and /proc/meminfo.
NODE=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=')
if [ -z "$NODE" ]; then
  NODE="NodeName=$H CPUs=$(nproc) RealMemory=$(($(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024))"
fi
NODE=$(sed "s/^NodeName=[^ ]*/NodeName=$H NodeAddr=127.0.0.1/" <<<"$NODE")

export SLURM_CONF="$T/slurm.conf"
cat >"$SLURM_CONF" <<EOF
# Generated by tools/slurm_check.sh: a throwaway one-node cluster.
ClusterName=ddrepcheck
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/run/munge.socket
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups: plain process tracking, no task binding, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# One line per finished job (state, exit code, array task), read below instead of sacct.
JobCompType=jobcomp/filetxt
JobCompLoc=$T/log/jobcomp.txt
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
$NODE State=UNKNOWN
PartitionName=check Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" >"$T/log/slurmd.out" 2>&1 || fail "slurmd did not start"
state=""
for ((i = 0; i < 60; i++)); do
  state=$(sinfo -h -n "$H" -o %t 2>/dev/null | head -n1)
  case "$state" in idle | mix | alloc) break ;; esac
  sleep 0.5
done
case "$state" in idle | mix | alloc) ;; *) fail "node $H did not come up (sinfo state '${state:-none}')" ;; esac
SETUP_S=$(($(date +%s) - t_up))
log "Slurm up in ${SETUP_S}s: node $H ($state), ctld port $CTLD_PORT, slurmd port $SLURMD_PORT"

# ---- 3. The job array that ddrep slurm writes
SL="$T/results-slurm"
SP="$T/results-single"
out=$("$DDREP_BIN" slurm "$FILE" --array "$ARRAY" \
  --sbatch="--output=$T/log/task-%a.out" --sbatch="--chdir=$T/work" --sbatch=--cpus-per-task=1 \
  "${OVERRIDES[@]}" "outputs.dir=$SL") || fail "ddrep slurm failed: $out"
log "$out"
SCRIPT=$(sed -n 's/.* -> \(.*\) (submit with.*/\1/p' <<<"$out")
[ -f "$SCRIPT" ] || fail "no job script in: $out"
NAME=$(sed -n 's/^\([^:]*\): .*/\1/p' <<<"$out")
NCELLS=$(sed -n 's/^[^:]*: \([0-9]*\) cells.*/\1/p' <<<"$out")
[ -n "$NAME" ] && [ -n "$NCELLS" ] || fail "cannot parse: $out"

t0=$(date +%s)
JOB=$(sbatch --parsable "$SCRIPT" 2>&1) || fail "sbatch failed: $JOB"
JOB=${JOB%%;*}
log "submitted array job $JOB ($ARRAY tasks, $NCELLS cells)"
errs=0
while :; do
  if q=$(squeue -h -j "$JOB" -o '%i %t' 2>&1); then
    errs=0
    [ -z "$q" ] && break
  else
    errs=$((errs + 1))
    [ "$errs" -ge 10 ] && fail "squeue failed 10 times in a row: $q"
  fi
  [ $(($(date +%s) - t0)) -ge "$TIMEOUT" ] && fail "array job $JOB not done after ${TIMEOUT}s: $(tr '\n' ' ' <<<"$q")"
  sleep 1
done
SLURM_S=$(($(date +%s) - t0))

# Every task COMPLETED with exit code 0 (jobcomp record).
for ((i = 0; i < 20; i++)); do
  [ "$(grep -c "ArrayJobId=$JOB ArrayTaskId=" "$T/log/jobcomp.txt" 2>/dev/null)" -ge "$ARRAY" ] && break
  sleep 0.5
done
computed=0
for ((a = 0; a < ARRAY; a++)); do
  rec=$(grep "ArrayJobId=$JOB ArrayTaskId=$a " "$T/log/jobcomp.txt" 2>/dev/null)
  [ "$(grep -c . <<<"$rec")" = 1 ] || fail "array task $a: expected one jobcomp record, got: $rec"
  grep -q 'JobState=COMPLETED' <<<"$rec" && grep -q ' ExitCode=0:0' <<<"$rec" ||
    fail "array task $a did not complete cleanly: $rec"
  tl=$(cat "$T/log/task-$a.out" 2>/dev/null)
  grep -q "(shard $a/$ARRAY: " <<<"$tl" || fail "array task $a did not run shard $a/$ARRAY: $tl"
  grep -q ' 0 failed' <<<"$tl" || fail "array task $a had failed cells: $tl"
  n=$(sed -n 's/.* \([0-9]*\) computed .*/\1/p' <<<"$tl" | tail -n1)
  computed=$((computed + ${n:-0}))
  log "task $a: $(sed -n 's/^[^(]*(\(shard [^)]*\)): \([0-9]* cached, [0-9]* computed\).*/\1: \2/p' <<<"$tl" | tail -n1), node $(sed -n 's/.* NodeList=\([^ ]*\).*/\1/p' <<<"$rec")"
done
[ "$computed" = "$NCELLS" ] || fail "the $ARRAY tasks computed $computed cells, the grid has $NCELLS (each cell must be computed exactly once)"
log "array job done in ${SLURM_S}s: $ARRAY tasks, $computed cells computed in all"

# ---- 4. The same grid single-process, and the comparison
t0=$(date +%s)
sp=$(cd "$T/work" && "$DDREP_BIN" run "$FILE" "${OVERRIDES[@]}" "outputs.dir=$SP" 2>&1) || fail "single-process run failed: $sp"
SINGLE_S=$(($(date +%s) - t0))
log "single-process run in ${SINGLE_S}s: $(tail -n1 <<<"$sp")"

st=$(cd "$T/work" && "$DDREP_BIN" status "$FILE" "${OVERRIDES[@]}" "outputs.dir=$SL" 2>&1) || fail "ddrep status failed: $st"
grep -q "^$NAME: $NCELLS cells: $NCELLS done, 0 pending, 0 failed" <<<"$st" || fail "ddrep status of the Slurm store: $st"

A="$SL/$NAME"
B="$SP/$NAME"
for d in "$A" "$B"; do
  [ -z "$(ls -A "$d/tmp" 2>/dev/null)" ] || fail "$d/tmp is not empty: $(ls -A "$d/tmp")"
  [ -z "$(ls -A "$d/failed" 2>/dev/null)" ] || fail "$d/failed is not empty: $(ls -A "$d/failed")"
done
ids_a=$(ls -A "$A/cells" | sort)
ids_b=$(ls -A "$B/cells" | sort)
plan=$(grep -o '"id": "[0-9a-f]\{64\}"' "$B/experiment.json" | cut -d'"' -f4 | sort)
[ "$(sort -u <<<"$plan" | grep -c .)" = "$NCELLS" ] || fail "experiment.json lists $(grep -c . <<<"$plan") cells, not $NCELLS distinct ones"
[ "$ids_a" = "$plan" ] || fail "the Slurm store's cells are not the grid's: $(diff <(echo "$plan") <(echo "$ids_a") | grep '^[<>]' | head)"
[ "$ids_b" = "$plan" ] || fail "the single-process store's cells are not the grid's"
# experiment.json: the same up to the results dir it names.
diff -q <(sed "s#$SL#DIR#g" "$A/experiment.json") <(sed "s#$SP#DIR#g" "$B/experiment.json") >/dev/null ||
  fail "experiment.json differs: $(diff <(sed "s#$SL#DIR#g" "$A/experiment.json") <(sed "s#$SP#DIR#g" "$B/experiment.json") | head)"
files=0
for id in $plan; do
  fa=$(ls -A "$A/cells/$id")
  fb=$(ls -A "$B/cells/$id")
  [ "$fa" = "$fb" ] || fail "cell $id: files differ: [$(tr '\n' ' ' <<<"$fa")] vs [$(tr '\n' ' ' <<<"$fb")]"
  for f in $fa; do
    if [ "$f" = cell.json ]; then
      if ! cmp -s <(grep -Ev "$VOLATILE" "$A/cells/$id/$f") <(grep -Ev "$VOLATILE" "$B/cells/$id/$f"); then
        fail "cell $id: cell.json differs beyond wall time: $(diff <(grep -Ev "$VOLATILE" "$A/cells/$id/$f") <(grep -Ev "$VOLATILE" "$B/cells/$id/$f") | head)"
      fi
    else
      cmp -s "$A/cells/$id/$f" "$B/cells/$id/$f" || fail "cell $id: $f differs"
    fi
    files=$((files + 1))
  done
done

TOTAL_S=$(($(date +%s) - START))
echo "SLURM CHECK PASS: $NCELLS cells of $NAME from a $ARRAY-task Slurm array ($(slurmctld -V 2>/dev/null)) match the single-process run ($files files byte for byte, cell.json up to wall time); Slurm ${SLURM_S}s, single ${SINGLE_S}s, total ${TOTAL_S}s"
exit 0
