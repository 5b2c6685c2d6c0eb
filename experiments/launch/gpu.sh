#!/usr/bin/env bash
# Run one dsmath command on every GPU of this machine (one process, JAX sees all local GPUs; the config's
# mesh spreads over them), and relaunch it after a failure or preemption until the workdir's summary.json
# says the run is finished. Each relaunch resumes from the workdir's latest checkpoint.
# See experiments/launch/README.md.
set -euo pipefail

SCRIPT=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)

usage() {
  cat <<EOF
usage: $SCRIPT [options] <command> --config=CONFIG --workdir=WORKDIR [dsmath flags]

Runs \`dsmath <command> ...\` with XLA's GPU flags set; relaunches it while it is not finished:
  exit 0 with summary.json status completed / data_exhausted / stopped (or an evaluation's summary)  -> done
  exit 0 with status preempted (SIGTERM), or any exit code but 2 (usage error)        -> relaunch, after
  --restart_delay seconds, at most --max_restarts times. SIGTERM or Ctrl-C to this script is passed to the
  run (which saves a checkpoint) and stops the loop.

options (before the command):
  --install            create \$VENV and pip install -e ".[gpu]" first (needs network)
  --venv=DIR           virtualenv to use (default: $REPO_ROOT/.venv; "none" uses the current python)
  --gpus=LIST          CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all)
  --mem_fraction=F     XLA_PYTHON_CLIENT_MEM_FRACTION, the share of GPU memory JAX preallocates (default 0.90)
  --max_restarts=N     relaunches after failures (default 10)
  --restart_delay=S    seconds between relaunches (default 30)
  --log=FILE           append the output here too (default: runs/logs/<workdir basename>.log in the repo root)
  --xla_flags=FLAGS    extra XLA flags, appended after the defaults (later flags win)
  --dry_run            print the environment and the command instead of running them
  -h, --help           this message

example:
  $SCRIPT --install pretrain --config=configs/pretrain/table1_corpora.py:openwebmath \\
      --workdir=runs/table1_owm --config.data.data_dir=/data/tfds --config.mesh.shape.fsdp=-1
EOF
}

die() { echo "$SCRIPT: $*" >&2; exit 2; }

# XLA flags worth having on GPUs: the latency-hiding scheduler overlaps FSDP's all-gathers and
# reduce-scatters with compute, and pipelining/combining them keeps NCCL busy with fewer, larger messages.
# Each is checked against the installed jaxlib by tests/test_launch.py (XLA aborts on an unknown flag).
GPU_XLA_FLAGS=(
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_highest_priority_async_stream=true
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  --xla_gpu_enable_while_loop_double_buffering=true
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
)

INSTALL=0 DRY_RUN=0
VENV=$REPO_ROOT/.venv
GPUS="" MEM_FRACTION=0.90 MAX_RESTARTS=10 RESTART_DELAY=30 LOG="" EXTRA_XLA=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --install) INSTALL=1 ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    --venv=*) VENV=${1#*=} ;;
    --gpus=*) GPUS=${1#*=} ;;
    --mem_fraction=*) MEM_FRACTION=${1#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${1#*=} ;;
    --restart_delay=*) RESTART_DELAY=${1#*=} ;;
    --log=*) LOG=${1#*=} ;;
    --xla_flags=*) EXTRA_XLA=${1#*=} ;;
    --) shift; break ;;
    -*) die "unknown option $1 (options take --name=value and go before the command; see --help)" ;;
    *) break ;;
  esac
  shift
done
[[ $# -ge 1 ]] || { usage >&2; exit 2; }
ARGS=("$@")  # the dsmath command and its flags, passed through untouched
[[ $MAX_RESTARTS =~ ^[0-9]+$ && $RESTART_DELAY =~ ^[0-9]+$ ]] || die "--max_restarts and --restart_delay take integers"
[[ $MEM_FRACTION =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "--mem_fraction must be between 0 and 1, got $MEM_FRACTION"

WORKDIR="" CONFIG=""
for ((i = 1; i < ${#ARGS[@]}; i++)); do
  case ${ARGS[i]} in
    --workdir=*) WORKDIR=${ARGS[i]#--workdir=} ;;
    --workdir) WORKDIR=${ARGS[i + 1]:-} ;;
    --config=*) CONFIG=${ARGS[i]#--config=} ;;
    --config) CONFIG=${ARGS[i + 1]:-} ;;
  esac
done
[[ -n $CONFIG ]] || die "${ARGS[0]}: --config=... is required"
[[ -n $WORKDIR ]] || die "${ARGS[0]}: --workdir=... is required"
[[ -n $LOG ]] || LOG=$REPO_ROOT/runs/logs/$(basename "$WORKDIR").log

q() {  # a shell word, quoted when needed (for printing)
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() {  # prints a command line
  local out="" word
  for word in "$@"; do out+="${out:+ }$(q "$word")"; done
  printf '%s\n' "$out"
}

if [[ $VENV == none ]]; then PYTHON=${PYTHON:-python3}; else PYTHON=$VENV/bin/python; fi

if ((INSTALL)); then
  [[ $VENV != none ]] || die "--install needs a --venv"
  if ((DRY_RUN)); then
    show python3 -m venv "$VENV"
    show "$VENV/bin/pip" install -e "${REPO_ROOT}[gpu]" "etils[epath-gcs]"
  else
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "${REPO_ROOT}[gpu]" "etils[epath-gcs]"
  fi
fi

export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }${GPU_XLA_FLAGS[*]}${EXTRA_XLA:+ $EXTRA_XLA}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
if [[ -n $GPUS ]]; then export CUDA_VISIBLE_DEVICES=$GPUS; fi
RUN=("$PYTHON" -m dsmath_jax.cli "${ARGS[@]}")

if ((DRY_RUN)); then
  echo "XLA_FLAGS=$(q "$XLA_FLAGS")"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  if [[ -n $GPUS ]]; then echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; fi
  show "${RUN[@]}"
  echo "# relaunched up to $MAX_RESTARTS times until $WORKDIR/summary.json says completed; log: $LOG"
  exit 0
fi

# The run's state from its summary.json: completed, preempted, ... ; "finished" for an evaluation's summary;
# "none" when there is none. epath reads local and gs:// workdirs alike.
run_status() {
  "$PYTHON" - "$WORKDIR" <<'EOF' 2>/dev/null || echo unreadable
import json, sys
from etils import epath
path = epath.Path(sys.argv[1]) / "summary.json"
if not path.exists():
    print("none")
else:
    summary = json.loads(path.read_text())
    print(summary.get("status") or ("finished" if "results" in summary else "unknown"))
EOF
}

mkdir -p "$(dirname "$LOG")"
CHILD=""
STOPPING=0
on_signal() {
  STOPPING=1
  echo "$SCRIPT: stopping: SIGTERM to the run (it saves a checkpoint)" | tee -a "$LOG" >&2
  if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
}
trap on_signal TERM INT

attempt=0
while true; do
  attempt=$((attempt + 1))
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) attempt $attempt: $(show "${RUN[@]}")" | tee -a "$LOG" >&2
  # The run in the background so that this script can pass signals on; its output to the terminal and the log.
  "${RUN[@]}" > >(tee -a "$LOG") 2>&1 &
  CHILD=$!
  rc=0
  wait "$CHILD" || rc=$?
  while kill -0 "$CHILD" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives
    rc=0
    wait "$CHILD" || rc=$?
  done
  CHILD=""
  status=$(run_status)
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) exit code $rc, summary status: $status" | tee -a "$LOG" >&2
  if ((STOPPING)); then exit "$rc"; fi
  if ((rc == 2)); then
    echo "$SCRIPT: usage error (exit code 2): not relaunching" >&2
    exit 2
  fi
  if ((rc == 0)) && [[ $status != preempted ]]; then
    exit 0  # completed, data_exhausted, stopped, an evaluation, or a command without a summary
  fi
  if ((attempt > MAX_RESTARTS)); then
    echo "$SCRIPT: giving up after $attempt attempts (last exit code $rc, status $status)" >&2
    exit $((rc == 0 ? 1 : rc))
  fi
  echo "$SCRIPT: not finished; relaunching in ${RESTART_DELAY}s (resumes from the latest checkpoint)" >&2
  sleep "$RESTART_DELAY" &
  wait $! || true
  if ((STOPPING)); then exit 1; fi
done
