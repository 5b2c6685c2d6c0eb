#!/usr/bin/env bash
# Launch dsmath_jax on a Cloud TPU VM or pod slice (v4, v5e, v5p, v6e): create the slice, install the code on
# every host, run one `dsmath` command on all hosts at once, resume it after preemption, watch it, delete it.
# See experiments/launch/README.md. `--dry_run` prints the gcloud commands instead of running them.
set -euo pipefail

SCRIPT=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)

usage() {
  cat <<EOF
usage: $SCRIPT [options] <subcommand> [arguments]

subcommands:
  create                  create the TPU VM / pod slice (tpu-vm create, or queued-resources with --queued)
  install                 on every worker: the repository at --ref, a venv, pip install -e ".[tpu]"
  run <command> [flags]   on every worker at once, in the background: dsmath <command> [flags]
                          (flags go through to dsmath; --config and --workdir are required); one log per
                          worker in ~/<dir>/logs/<run>.worker<N>.log; the command is remembered for resume
  resume                  re-run the last \`run\` (the workdir's checkpoints make it continue); a preempted,
                          terminated or missing slice is first re-created and re-installed (--recreate forces it)
  watch                   every --interval seconds: resume when the slice was preempted or the run is not
                          alive, until the workdir's summary.json says completed
  stop                    SIGTERM the run on every worker (it saves a checkpoint and exits) and wait
  status                  the slice's state, the run's process and last log line on every worker, summary.json
  logs                    tail the latest run's log (--worker=N, --lines=N, --follow, --run=NAME)
  exec '<shell command>'  run a shell command on every worker (in ~/<dir>)
  delete                  delete the slice (and its queued resource)

options (before the subcommand's arguments: everything after \`run <command>\` goes to dsmath as it is;
each option is also read from the environment variable shown):
  --name=NAME             TPU name                                  DSMATH_TPU_NAME (required)
  --zone=ZONE             zone, e.g. us-central2-b                  DSMATH_TPU_ZONE (required)
  --project=PROJECT       GCP project (default: gcloud's)           DSMATH_TPU_PROJECT
  --accelerator=TYPE      v4-8, v4-32, v5litepod-16, v5p-128, v6e-64  DSMATH_TPU_ACCELERATOR (default v5p-8)
  --runtime=VERSION       TPU software version (default by type:    DSMATH_TPU_RUNTIME
                          v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot                  spot capacity (cheap, preemptible at any time)          DSMATH_TPU_SPOT=1
  --preemptible           legacy preemptible capacity (tpu-vm create only)        DSMATH_TPU_PREEMPTIBLE=1
  --queued                create through a queued resource (waits for capacity)   DSMATH_TPU_QUEUED=1
  --repo=URL              git URL to clone (default: this checkout's origin)       DSMATH_REPO
  --ref=REF               git ref to install (default: this checkout's HEAD)       DSMATH_REF
  --copy                  copy \`git archive REF\` of this checkout instead of cloning (private repos)
  --dir=DIR               install directory on the workers (default dsmath_jax, under ~)  DSMATH_REMOTE_DIR
  --env=KEY=VALUE         extra environment for \`run\` (repeatable), e.g. --env=LIBTPU_INIT_ARGS=...
  --run=NAME              run name for logs and pid files (default: the workdir's basename)
  --wait                  \`run\` starts the command detached and waits until it exits (polling worker 0;
                          a lost connection does not stop the run, and waiting again re-attaches): sweeps
  --foreground            \`run\` streams the command's output and ends with it (stops if the connection drops)
  --worker=N|all          worker for \`logs\` (default 0)
  --lines=N               lines for \`logs\` (default 100);  --follow: tail -f
  --recreate              \`resume\`: delete, create and install before running
  --interval=SECONDS      polling interval of \`watch\` (default 600) and \`run --wait\` (default 60)
  --dry_run               print the gcloud commands instead of running them
  -h, --help              this message

examples:
  export DSMATH_TPU_NAME=dsm-v5p DSMATH_TPU_ZONE=us-east5-a DSMATH_TPU_ACCELERATOR=v5p-128
  $SCRIPT --spot create && $SCRIPT install
  $SCRIPT run pretrain --config=configs/pretrain/table1_corpora.py:openwebmath \\
      --workdir=gs://BUCKET/runs/table1_openwebmath --config.data.data_dir=gs://BUCKET/tfds
  $SCRIPT logs --follow;  $SCRIPT resume;  $SCRIPT delete
EOF
}

die() { echo "$SCRIPT: $*" >&2; exit 2; }

# A shell word for $1: as is when it is made of safe characters, otherwise single-quoted (POSIX).
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
# The words of "$@" quoted and joined by spaces.
qall() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(q "$word")"; done
  printf '%s' "$out"
}

NAME=${DSMATH_TPU_NAME:-}
ZONE=${DSMATH_TPU_ZONE:-}
PROJECT=${DSMATH_TPU_PROJECT:-}
ACCELERATOR=${DSMATH_TPU_ACCELERATOR:-v5p-8}
RUNTIME=${DSMATH_TPU_RUNTIME:-}
SPOT=${DSMATH_TPU_SPOT:-0}
PREEMPTIBLE=${DSMATH_TPU_PREEMPTIBLE:-0}
QUEUED=${DSMATH_TPU_QUEUED:-0}
REPO=${DSMATH_REPO:-}
REF=${DSMATH_REF:-}
REMOTE_DIR=${DSMATH_REMOTE_DIR:-dsmath_jax}
STATE_DIR=${DSMATH_LAUNCH_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/dsmath_launch}
COORDINATOR_PORT=${DSMATH_COORDINATOR_PORT:-8482}  # jax's default for TPU slices
# shellcheck disable=SC2016  # expanded on the worker
ACTIVATE='export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"'  # the venv, on a worker
COPY=0 DRY_RUN=0 FOREGROUND=0 WAIT=0 FOLLOW=0 RECREATE=0
WORKER=0 LINES=100 INTERVAL="" RUN_NAME=""
ENVS=()
SUBCOMMAND=""
ARGS=()

# Launcher options go before the subcommand's arguments; for `run` everything from the dsmath command on is
# passed through untouched (as is everything after a `--`).
value_of() {  # value_of OPTION ARG NEXT: the value of --opt=value, or of --opt value (then SHIFT_EXTRA=1)
  if [[ $2 == *=* ]]; then VALUE=${2#*=}; SHIFT_EXTRA=0
  else [[ $# -ge 3 ]] || die "$1 needs a value"; VALUE=$3; SHIFT_EXTRA=1; fi
}
while [[ $# -gt 0 ]]; do
  arg=$1; SHIFT_EXTRA=0
  if [[ ($SUBCOMMAND == run || $SUBCOMMAND == exec) && ${#ARGS[@]} -gt 0 ]]; then
    ARGS+=("$@"); break  # the dsmath command's own flags, untouched
  fi
  case $arg in
    -h|--help|help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --queued) QUEUED=1 ;;
    --copy) COPY=1 ;;
    --foreground) FOREGROUND=1 ;;
    --wait) WAIT=1 ;;
    --follow|-f) FOLLOW=1 ;;
    --recreate) RECREATE=1 ;;
    --name|--name=*) value_of --name "$@"; NAME=$VALUE ;;
    --zone|--zone=*) value_of --zone "$@"; ZONE=$VALUE ;;
    --project|--project=*) value_of --project "$@"; PROJECT=$VALUE ;;
    --accelerator|--accelerator=*|--accelerator-type|--accelerator-type=*)
      value_of --accelerator "$@"; ACCELERATOR=$VALUE ;;
    --runtime|--runtime=*|--version|--version=*) value_of --runtime "$@"; RUNTIME=$VALUE ;;
    --repo|--repo=*) value_of --repo "$@"; REPO=$VALUE ;;
    --ref|--ref=*) value_of --ref "$@"; REF=$VALUE ;;
    --dir|--dir=*) value_of --dir "$@"; REMOTE_DIR=$VALUE ;;
    --env|--env=*) value_of --env "$@"; ENVS+=("$VALUE") ;;
    --run|--run=*) value_of --run "$@"; RUN_NAME=$VALUE ;;
    --worker|--worker=*) value_of --worker "$@"; WORKER=$VALUE ;;
    --lines|--lines=*) value_of --lines "$@"; LINES=$VALUE ;;
    --interval|--interval=*) value_of --interval "$@"; INTERVAL=$VALUE ;;
    *)
      if [[ -z $SUBCOMMAND ]]; then
        [[ $arg != -* ]] || die "unknown option $arg before the subcommand (see --help)"
        SUBCOMMAND=$arg
      else
        ARGS+=("$arg")
      fi ;;
  esac
  shift $((1 + SHIFT_EXTRA))
done

[[ -n $SUBCOMMAND ]] || { usage >&2; exit 2; }
[[ $SPOT =~ ^[01]$ && $PREEMPTIBLE =~ ^[01]$ && $QUEUED =~ ^[01]$ ]] ||
  die "DSMATH_TPU_SPOT, DSMATH_TPU_PREEMPTIBLE and DSMATH_TPU_QUEUED must be 0 or 1"

require_tpu() {
  [[ -n $NAME ]] || die "the TPU name is required: --name=NAME or DSMATH_TPU_NAME"
  [[ -n $ZONE ]] || die "the zone is required: --zone=ZONE or DSMATH_TPU_ZONE"
}

# gcloud, or (with --dry_run) the command it would run, one line, quoted so that it can be pasted.
gc() {
  if ((DRY_RUN)); then
    printf 'gcloud %s\n' "$(qall "$@")"
  else
    gcloud "$@"
  fi
}
# TPU=(NAME --zone=ZONE [--project=P]) and WHERE=(--zone=ZONE [--project=P]).
tpu_args() {
  WHERE=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then WHERE+=("--project=$PROJECT"); fi
  TPU=("$NAME" "${WHERE[@]}")
}
# Runs a shell script on the workers (default: all of them) in ~/REMOTE_DIR.
on_workers() {  # on_workers WORKER SCRIPT
  tpu_args
  gc compute tpus tpu-vm ssh "${TPU[@]}" "--worker=$1" "--command=$2"
}
remote_cd() {  # the `cd` into the install directory on a worker ($HOME-relative unless absolute)
  if [[ $REMOTE_DIR == /* ]]; then
    printf 'cd %s' "$(q "$REMOTE_DIR")"
  else
    printf 'cd ~/%s' "$(q "$REMOTE_DIR")"
  fi
}

default_runtime() {
  case $ACCELERATOR in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for accelerator $ACCELERATOR: pass --runtime=VERSION (gcloud compute tpus tpu-vm versions list)" ;;
  esac
}

cmd_create() {
  require_tpu
  local accel=$ACCELERATOR runtime=$RUNTIME
  if [[ $accel == v5e-* ]]; then accel=v5litepod-${accel#v5e-}; fi  # gcloud's name for v5e slices
  if [[ -z $runtime ]]; then runtime=$(default_runtime); fi
  if ((SPOT && PREEMPTIBLE)); then die "--spot and --preemptible exclude each other"; fi
  local capacity=()
  if ((SPOT)); then capacity=(--spot); fi
  if ((QUEUED)); then
    if ((PREEMPTIBLE)); then die "queued resources take --spot, not --preemptible"; fi
    tpu_args
    gc compute tpus queued-resources create "$NAME" "--node-id=$NAME" "${WHERE[@]}" \
      "--accelerator-type=$accel" "--runtime-version=$runtime" ${capacity[@]+"${capacity[@]}"}
    echo "$SCRIPT: queued; \`$SCRIPT status\` shows when the slice is ACTIVE, then run \`$SCRIPT install\`" >&2
  else
    if ((PREEMPTIBLE)); then capacity=(--preemptible); fi
    tpu_args
    gc compute tpus tpu-vm create "${TPU[@]}" "--accelerator-type=$accel" "--version=$runtime" \
      ${capacity[@]+"${capacity[@]}"}
  fi
}

cmd_install() {
  require_tpu
  local ref=$REF fetch
  if [[ -z $ref ]]; then
    ref=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null) || die "no --ref given and $REPO_ROOT is not a git checkout"
    if [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
      echo "$SCRIPT: note: uncommitted changes in $REPO_ROOT are not installed (only commit $ref)" >&2
    fi
  fi
  if ((COPY)); then
    local tarball
    tarball="${TMPDIR:-/tmp}/dsmath_jax-$NAME.tar.gz"
    if ((DRY_RUN)); then
      printf 'git -C %s archive --format=tar.gz -o %s %s\n' "$(q "$REPO_ROOT")" "$(q "$tarball")" "$(q "$ref")"
    else
      git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" "$ref"
    fi
    tpu_args
    gc compute tpus tpu-vm scp "$tarball" "$NAME:dsmath_jax.tar.gz" "${WHERE[@]}" --worker=all
    fetch="mkdir -p $(q "$REMOTE_DIR") && tar -xzf dsmath_jax.tar.gz -C $(q "$REMOTE_DIR") && rm dsmath_jax.tar.gz"
  else
    local repo=$REPO
    if [[ -z $repo ]]; then
      repo=$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null) ||
        die "no --repo given and this checkout has no 'origin' remote: pass --repo=URL or use --copy"
    fi
    local d
    d=$(q "$REMOTE_DIR")
    fetch="if [ -d $d/.git ]; then git -C $d fetch --tags --force origin; else git clone $(q "$repo") $d; fi
if git -C $d fetch --force origin $(q "$ref"); then git -C $d checkout --force --detach FETCH_HEAD
else git -C $d checkout --force --detach $(q "$ref"); fi
git -C $d log -1 --format='installed %H %s'"
  fi
  # pip on every worker; etils[epath-gcs] lets epath (and so Orbax and the loop) read and write gs:// workdirs.
  # The closing device count runs on all hosts at once, which is how a pod slice's runtime starts.
  on_workers all "set -euo pipefail
cd \"\$HOME\"
$fetch
$(remote_cd)
# jax needs python >= 3.11; TPU images based on Ubuntu 22.04 have 3.10: apt's python3.11, else uv's python.
new_enough='import sys; sys.exit(sys.version_info < (3, 11))'
if [ -x .venv/bin/python ] && ! .venv/bin/python -c \"\$new_enough\"; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  py=''
  for p in python3 python3.13 python3.12 python3.11; do
    if command -v \$p > /dev/null && \$p -c \"\$new_enough\"; then py=\$p; break; fi
  done
  if [ -z \"\$py\" ] && sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; then py=python3.11; fi
  if [ -z \"\$py\" ] || ! { \$py -m venv .venv || { sudo apt-get install -y -q \$py-venv && \$py -m venv .venv; }; }; then
    python3 -m pip install -q --user uv && ~/.local/bin/uv venv --seed --python 3.11 .venv
  fi
fi
$ACTIVATE
pip install -q --upgrade pip
pip install -q -e '.[tpu]' 'etils[epath-gcs]'
python -c 'import jax; print(\"worker\", jax.process_index(), \"of\", jax.process_count(), \":\", jax.local_device_count(), \"local /\", jax.device_count(), \"devices\", flush=True)'"
}

# The value of --NAME=... or --NAME ... among dsmath's flags ("" when absent).
flag_value() {
  local name=$1 i; shift
  local -a words=("$@")
  for ((i = 0; i < ${#words[@]}; i++)); do
    case ${words[i]} in
      "--$name="*) printf '%s' "${words[i]#--"$name"=}"; return ;;
      "--$name") if ((i + 1 < ${#words[@]})); then printf '%s' "${words[i + 1]}"; fi; return ;;
    esac
  done
}

state_file() { printf '%s/%s.run' "$STATE_DIR" "$NAME"; }

cmd_run() {
  require_tpu
  [[ ${#ARGS[@]} -ge 1 ]] || die "run needs a dsmath command, e.g. run pretrain --config=... --workdir=gs://..."
  local command=${ARGS[0]}
  local workdir config
  workdir=$(flag_value workdir "${ARGS[@]:1}")
  config=$(flag_value config "${ARGS[@]:1}")
  [[ -n $config ]] || die "run $command: --config=... is required"
  [[ -n $workdir ]] || die "run $command: --workdir=... is required"
  if [[ $workdir != gs://* ]]; then
    echo "$SCRIPT: warning: --workdir=$workdir is not on GCS: on a pod slice every host must see the same" \
      "checkpoints, and a preempted VM loses its disk" >&2
  fi
  local run=${RUN_NAME:-$(basename "$workdir")}
  [[ $run =~ ^[A-Za-z0-9_.-]+$ ]] || die "run name '$run' must be made of letters, digits, '.', '_', '-' (set --run=NAME)"
  local exports="" kv
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '$kv'"
    exports+="export $(q "$kv")"$'\n'
  done
  if ((!DRY_RUN)); then  # remembered for `resume` and `watch` (before the start, which may fail half-way)
    mkdir -p "$STATE_DIR"
    {
      printf 'RUN_ARGS=(%s)\n' "$(qall "${ARGS[@]}")"
      printf 'RUN_ENVS=(%s)\n' "$(qall ${ENVS[@]+"${ENVS[@]}"})"
      printf 'RUN_NAME=%s\nRUN_WORKDIR=%s\n' "$(q "$run")" "$(q "$workdir")"
    } > "$(state_file).tmp"
    mv "$(state_file).tmp" "$(state_file)"
  fi
  local launch already_rc=1
  if ((WAIT)); then already_rc=0; fi  # --wait on a run that is already going: wait for it
  if ((FOREGROUND)); then
    launch="dsmath $(qall "${ARGS[@]}") 2>&1 | tee -a \"\$log\""
  else
    launch="nohup dsmath $(qall "${ARGS[@]}") >> \"\$log\" 2>&1 < /dev/null &
echo \$! > \"\$pidfile\"
echo \"worker \$worker: started pid \$! (log ~/$REMOTE_DIR/\$log)\""
  fi
  # Per worker: its index from the metadata server; on a multi-host slice JAX_COORDINATOR_ADDRESS (worker 0,
  # as jax's own TPU cluster detection picks it) so that config.distributed.enabled=auto starts
  # jax.distributed; process count and index come from jax's TPU detection.
  on_workers all "set -euo pipefail
$(remote_cd)
$ACTIVATE
mkdir -p logs
md=http://metadata.google.internal/computeMetadata/v1/instance/attributes
worker=\$(curl -sf -H Metadata-Flavor:Google \$md/agent-worker-number || hostname)
endpoints=\$(curl -sf -H Metadata-Flavor:Google \$md/worker-network-endpoints || true)
if [ -z \"\${JAX_COORDINATOR_ADDRESS:-}\" ] && [ \"\$(printf '%s' \"\$endpoints\" | tr ',' '\\n' | grep -c .)\" -gt 1 ]; then
  first=\${endpoints%%,*}
  export JAX_COORDINATOR_ADDRESS=\${first##*:}:$COORDINATOR_PORT
fi
${exports}log=logs/$run.worker\$worker.log
pidfile=logs/$run.worker\$worker.pid
if [ -f \"\$pidfile\" ] && kill -0 \"\$(cat \"\$pidfile\")\" 2>/dev/null; then
  echo \"worker \$worker: $run is already running (pid \$(cat \"\$pidfile\"))\" >&2; exit $already_rc
fi
echo $run > logs/latest_run
ln -sfn \"$run.worker\$worker.log\" logs/latest.log
echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) dsmath $(qall "${ARGS[@]}" | sed 's/["$`\\]/\\&/g')\" >> \"\$log\"
$launch"
  if ((WAIT && !FOREGROUND)); then wait_for_run "$run"; fi
}

alive_script() {  # prints "alive" or "dead": the run's process on the worker this runs on (worker 0)
  printf '%s' "$(remote_cd) && p=logs/$1.worker0.pid && if [ -f \$p ] && kill -0 \"\$(cat \$p)\" 2>/dev/null; then echo alive; else echo dead; fi"
}

# --wait: the run is detached on the workers (a lost connection does not stop it); poll worker 0 until its
# process has exited, then show the end of its log.
wait_for_run() {
  local run=$1 poll=${INTERVAL:-60} alive
  [[ $poll =~ ^[0-9]+$ ]] || die "--interval must be a number of seconds"
  if ((DRY_RUN)); then
    on_workers 0 "$(alive_script "$run")"
    return 0
  fi
  echo "$SCRIPT: waiting for $run (worker 0 checked every ${poll}s)" >&2
  while true; do
    sleep "$poll"
    alive=$(on_workers 0 "$(alive_script "$run")" 2>/dev/null || echo unknown)
    if [[ $alive == *dead* ]]; then break; fi
  done
  echo "$SCRIPT: $run has exited on worker 0; the end of its log:" >&2
  on_workers 0 "$(remote_cd) && tail -n 5 logs/$run.worker0.log" >&2 || true
}

load_state() {
  local file
  file=$(state_file)
  [[ -f $file ]] || die "no earlier \`run\` on $NAME is recorded in $file: use \`$SCRIPT run ...\`"
  local chosen_run=$RUN_NAME
  RUN_ARGS=() RUN_ENVS=() RUN_WORKDIR=""
  # shellcheck disable=SC1090  # written by cmd_run, every word quoted
  source "$file"
  if [[ -n $chosen_run ]]; then RUN_NAME=$chosen_run; fi
}

tpu_state() {  # READY, CREATING, PREEMPTED, TERMINATED, ... or MISSING
  tpu_args
  gcloud compute tpus tpu-vm describe "${TPU[@]}" --format='value(state)' 2>/dev/null || echo MISSING
}

cmd_resume() {
  require_tpu
  load_state
  local state=READY
  if ((!DRY_RUN)); then state=$(tpu_state); fi
  case $state in
    PREEMPTED|TERMINATED|MISSING|"") RECREATE=1 ;;
  esac
  if ((RECREATE)); then
    # Spot and preemptible slices cannot be restarted: they are deleted and created again.
    echo "$SCRIPT: slice $NAME is ${state:-unknown}: re-creating and re-installing it before resuming" >&2
    if [[ $state != MISSING ]]; then cmd_delete; fi
    cmd_create
    if ((QUEUED && !DRY_RUN)); then wait_ready; fi
    cmd_install
  fi
  ARGS=("${RUN_ARGS[@]}")
  ENVS=(${RUN_ENVS[@]+"${RUN_ENVS[@]}"} ${ENVS[@]+"${ENVS[@]}"})
  cmd_run
}

wait_ready() {  # a queued resource: wait until its node is READY (up to 24 hours)
  local i
  for ((i = 0; i < 1440; i++)); do
    [[ $(tpu_state) == READY ]] && return 0
    sleep 60
  done
  die "slice $NAME did not become READY in 24 hours"
}

cat_summary() {  # prints the workdir's summary.json (nothing when there is none)
  local workdir=$1
  if [[ $workdir == gs://* ]]; then
    gc storage cat "$workdir/summary.json" 2>/dev/null || true
  elif ((DRY_RUN)); then
    printf 'cat %s\n' "$(q "$workdir/summary.json")"
  elif [[ -f $workdir/summary.json ]]; then
    cat "$workdir/summary.json"
  fi
}

# `resume` in a process of its own, so that its errors stop it (and not the watch) and `set -e` holds in it.
resume_process() {
  local flags=()
  if ((COPY)); then flags+=(--copy); fi
  if ((DRY_RUN)); then flags+=(--dry_run); fi
  DSMATH_TPU_NAME=$NAME DSMATH_TPU_ZONE=$ZONE DSMATH_TPU_PROJECT=$PROJECT DSMATH_TPU_ACCELERATOR=$ACCELERATOR \
    DSMATH_TPU_RUNTIME=$RUNTIME DSMATH_TPU_SPOT=$SPOT DSMATH_TPU_PREEMPTIBLE=$PREEMPTIBLE DSMATH_TPU_QUEUED=$QUEUED \
    DSMATH_REPO=$REPO DSMATH_REF=$REF DSMATH_REMOTE_DIR=$REMOTE_DIR DSMATH_LAUNCH_STATE=$STATE_DIR \
    bash "$0" ${flags[@]+"${flags[@]}"} resume
}

cmd_watch() {
  require_tpu
  load_state
  INTERVAL=${INTERVAL:-600}
  [[ $INTERVAL =~ ^[0-9]+$ ]] || die "--interval must be a number of seconds"
  local summary state alive
  while true; do
    summary=$(cat_summary "$RUN_WORKDIR")
    if [[ $summary =~ \"status\":\ *\"(completed|data_exhausted|stopped)\" ]]; then
      echo "$SCRIPT: $RUN_WORKDIR: ${BASH_REMATCH[1]}"
      return 0
    elif [[ $summary == *'"results"'* && $summary != *'"status"'* ]]; then
      echo "$SCRIPT: $RUN_WORKDIR: evaluation finished"
      return 0
    fi
    state=READY
    if ((!DRY_RUN)); then state=$(tpu_state); fi
    if [[ $state != READY ]]; then
      echo "$SCRIPT: $(date -u +%FT%TZ) slice $NAME is $state: resuming" >&2
      resume_process || echo "$SCRIPT: resume failed; trying again in ${INTERVAL}s" >&2
    else
      alive=$(on_workers 0 "$(alive_script "$RUN_NAME")" 2>/dev/null || echo unknown)
      if [[ $alive == *dead* ]]; then
        # One host's process ended (a crash, or its VM restarted): stop the others, then start all again.
        echo "$SCRIPT: $(date -u +%FT%TZ) $RUN_NAME is not running on worker 0 and not complete: resuming" >&2
        cmd_stop || true
        resume_process || echo "$SCRIPT: resume failed; trying again in ${INTERVAL}s" >&2
      fi
    fi
    if ((DRY_RUN)); then return 0; fi  # one round shows what a watch does
    sleep "$INTERVAL"
  done
}

cmd_stop() {
  require_tpu
  local run=$RUN_NAME
  local select="\$(cat logs/latest_run 2>/dev/null || true)"
  if [[ -n $run ]]; then select=$(q "$run"); fi
  on_workers all "$(remote_cd) || exit 0
run=$select
for p in logs/\"\$run\".worker*.pid; do
  [ -f \"\$p\" ] || continue
  pid=\$(cat \"\$p\")
  if kill -TERM \"\$pid\" 2>/dev/null; then
    echo \"\$(hostname): SIGTERM to \$run (pid \$pid); waiting for its checkpoint\"
    for _ in \$(seq 600); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done
    kill -0 \"\$pid\" 2>/dev/null && echo \"\$(hostname): still running after 10 minutes\" || echo \"\$(hostname): stopped\"
  fi
done
true"
}

cmd_status() {
  require_tpu
  tpu_args
  if ((QUEUED)); then
    gc compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)'
  fi
  gc compute tpus tpu-vm describe "${TPU[@]}" \
    --format='table(name.basename(),state,health,acceleratorType,runtimeVersion)'
  on_workers all "$(remote_cd) 2>/dev/null || { echo \"\$(hostname): not installed\"; exit 0; }
run=\$(cat logs/latest_run 2>/dev/null || echo none)
for p in logs/\"\$run\".worker*.pid; do
  [ -f \"\$p\" ] || { echo \"\$(hostname): no run\"; continue; }
  if kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then state=running; else state=exited; fi
  echo \"\$(hostname): \$run \$state: \$(tail -n 1 logs/latest.log 2>/dev/null | cut -c1-160)\"
done"
  if [[ -f $(state_file) ]]; then
    load_state
    echo "summary of $RUN_WORKDIR:"
    cat_summary "$RUN_WORKDIR"
  fi
}

cmd_logs() {
  require_tpu
  local file=logs/latest.log tail_flags="-n $LINES"
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number"
  if [[ -n $RUN_NAME ]]; then file="logs/$RUN_NAME.worker*.log"; fi
  if ((FOLLOW)); then tail_flags+=" -F"; fi
  on_workers "$WORKER" "$(remote_cd) && tail $tail_flags $file"
}

cmd_exec() {
  require_tpu
  [[ ${#ARGS[@]} -ge 1 ]] || die "exec needs a shell command, e.g. exec 'nvidia-smi || ls'"
  on_workers all "$(remote_cd) 2>/dev/null || true
${ARGS[*]}"
}

cmd_delete() {
  require_tpu
  if ((QUEUED)); then
    tpu_args
    gc compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    tpu_args
    gc compute tpus tpu-vm delete "${TPU[@]}" --quiet
  fi
}

case $SUBCOMMAND in
  create) cmd_create ;;
  install) cmd_install ;;
  run) cmd_run ;;
  resume) cmd_resume ;;
  watch) cmd_watch ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  exec) cmd_exec ;;
  delete) cmd_delete ;;
  *) echo "$SCRIPT: unknown subcommand '$SUBCOMMAND'" >&2; usage >&2; exit 2 ;;
esac
