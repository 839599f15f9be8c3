#!/usr/bin/env bash
# Build the SkipNet Tune image and run the compose stack for real, with podman, on a CPU host:
#   1. prerequisites   podman, podman-compose, the host's skipnet (.venv), debootstrap if needed
#   2. rootfs          a Debian bookworm root file system (debootstrap), imported as an image
#   3. base-images     docker/local/: a stand-in for Ray's image, and PostgreSQL
#   4. wheelhouse      the wheels of requirements.txt, taken by pip on the host (its index or
#                      find-links: torch's CUDA wheels may exist only there)
#   5. image           docker/Dockerfile on the local base, pip installing from the wheelhouse
#   6. up              compose.yaml + compose.cpu.yaml: Ray head, one CPU worker, MLflow,
#                      PostgreSQL; token authentication on; ports on 127.0.0.1 only
#   7. ready           MLflow and the Jobs API answer, both Ray nodes alive, health checks pass
#   8. submit          `skipnet submit experiments/quickstart.yaml` from the host
#   9. job             waits for SUCCEEDED; cli: the compose `skipnet` service sees it too
#  10. mlflow          the parent run and every trial run, with their metrics, through the
#                      MLflow REST API, and the same runs in PostgreSQL
#  11. pareto, export  `skipnet pareto` and `skipnet export --knee` against that MLflow (the
#                      front's files reach MLflow's artifact store through the server)
#  12. down            removes every container, the pod, the network and the volumes
# Each step prints its wall time; a failure prints one line naming the step (its log is kept).
# Teardown runs on any exit once the stack is up. Images are kept as a cache for the next run.
#
#   docker/smoke.sh [--dry-run] [--wheelhouse DIR] [--job-timeout SECONDS]
#
# --dry-run prints the commands it would run and checks the prerequisites, changing nothing
# (exit 1 when one is missing). Environment: PODMAN, PODMAN_COMPOSE, SKIPNET (the host CLI),
# PYTHON (the host venv's python), DEBIAN_MIRROR, SKIPNET_WHEELHOUSE, CONTAINERS_CONF (e.g.
# docker/local/containers.conf where podman's default runtime, crun, cannot start containers).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PODMAN=${PODMAN:-podman}
PODMAN_COMPOSE=${PODMAN_COMPOSE:-$(command -v "$ROOT/.venv/bin/podman-compose" || echo podman-compose)}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SKIPNET=${SKIPNET:-$ROOT/.venv/bin/skipnet}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEELHOUSE=${SKIPNET_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/skipnet/wheelhouse}
JOB_TIMEOUT=1800
DRY_RUN=0

PROJECT=skipnet-smoke
ROOTFS_IMAGE=localhost/skipnet-rootfs:bookworm
BASE_IMAGE=localhost/skipnet-base:bookworm
POSTGRES_IMAGE=localhost/skipnet-postgres:15
IMAGE=localhost/skipnet-tune:ray2.60.0
DEBIAN_PACKAGES=python3,python3-venv,ca-certificates,postgresql,procps
# experiments/quickstart.yaml: 4 alphas x 2 gate types, budget.max_steps 2 (tests/test_deploy.py checks)
QUICKSTART=experiments/quickstart.yaml
QUICKSTART_EXPERIMENT=skipnet-quickstart
QUICKSTART_TRIALS=8
QUICKSTART_STEPS=2

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
        --job-timeout) JOB_TIMEOUT=${2:?--job-timeout needs seconds}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "docker/smoke.sh: unknown argument $1 (accepted: --dry-run, --wheelhouse DIR, --job-timeout SECONDS)" >&2
           exit 2 ;;
    esac
    shift
done
case "$JOB_TIMEOUT" in ''|*[!0-9]*) echo "docker/smoke.sh: --job-timeout must be whole seconds, got $JOB_TIMEOUT" >&2; exit 2 ;; esac

if [ -n "${CONTAINERS_CONF:-}" ]; then      # podman and its helpers run in other directories
    [ -f "$CONTAINERS_CONF" ] || { echo "docker/smoke.sh: CONTAINERS_CONF=$CONTAINERS_CONF is not a file" >&2; exit 2; }
    CONTAINERS_CONF=$(cd "$(dirname "$CONTAINERS_CONF")" && pwd)/$(basename "$CONTAINERS_CONF")
    export CONTAINERS_CONF
fi
COMPOSE_FILES=(-f "$ROOT/docker/compose.yaml" -f "$ROOT/docker/compose.cpu.yaml")
HEAD=${PROJECT}_ray-head_1
MLFLOW=${PROJECT}_mlflow_1
POSTGRES=${PROJECT}_postgres_1
if [ "$DRY_RUN" = 1 ]; then
    WORK='$WORK'; DASHBOARD_PORT='$DASHBOARD_PORT'; CLIENT_PORT='$CLIENT_PORT'; MLFLOW_PORT='$MLFLOW_PORT'
    JOB_ID='$JOB_ID'
else
    WORK=""      # made once the prerequisites are there: logs, the stack's env file, its mounts
fi
STACK_UP=0
STEP=none
LOG=/dev/null

say() { printf '[smoke] %s\n' "$*"; }
# x CMD...: run a command of a step (its output goes to the step's log); in a dry run, print it.
x() {
    if [ "$DRY_RUN" = 1 ]; then printf '    $'; printf ' %q' "$@"; printf '\n'; return 0; fi
    "$@" >>"$LOG" 2>&1
}
fail() {   # one line naming the step, then exit (teardown follows through the EXIT trap)
    local last
    last=$(grep -v '^[[:space:]]*$' "$LOG" 2>/dev/null | tail -n 1 | cut -c1-240)
    local where=""
    [ "$LOG" = /dev/null ] || where="; log: $LOG"
    echo "smoke: step $STEP failed after $(( SECONDS - STEP_START )) s: $*${last:+ (last output: $last)}$where" >&2
    exit 1
}
# step NAME DESCRIPTION FUNCTION: time one step; FUNCTION may set DETAIL, printed with the time.
step() {
    STEP=$1; STEP_START=$SECONDS
    if [ "$DRY_RUN" = 1 ]; then say "step $1: $2"; "$3"; return 0; fi
    LOG=/dev/null
    [ -z "$WORK" ] || { LOG=$WORK/logs/$1.log; : >"$LOG"; }
    DETAIL=""
    "$3"      # in this shell: a step sets what later steps use (ports, JOB_ID); fail exits
    say "step $1 ok in $(( SECONDS - STEP_START )) s${DETAIL:+: $DETAIL}"
}

compose() { x "$PODMAN_COMPOSE" --podman-path "$PODMAN" -p "$PROJECT" --env-file "$WORK/stack.env" "${COMPOSE_FILES[@]}" "$@"; }

# -- 1. prerequisites -------------------------------------------------------------------------
MISSING=()
need() {   # need NAME HOW-TO-INSTALL COMMAND...: COMMAND must succeed
    local name=$1 how=$2; shift 2
    if "$@" >/dev/null 2>&1; then say "  $name: ok"; else say "  $name: MISSING ($how)"; MISSING+=("$name ($how)"); fi
}
prerequisites() {
    need podman "apt-get install podman runc" "$PODMAN" --version
    need podman-compose "pip install podman-compose==1.6.0 (it is in requirements.txt)" "$PODMAN_COMPOSE" --help
    need "skipnet on the host" "bash scripts/setup.sh" "$SKIPNET" --help
    need "the host's python with pip" "bash scripts/setup.sh" "$PYTHON" -m pip --version
    if ! "$PODMAN" image exists "$ROOTFS_IMAGE" 2>/dev/null; then
        need debootstrap "apt-get install debootstrap" command -v debootstrap
        need "root (for debootstrap)" "run as root, or import $ROOTFS_IMAGE yourself" test "$(id -u)" = 0
    fi
    if [ "${#MISSING[@]}" -gt 0 ]; then
        local IFS=';'
        [ "$DRY_RUN" = 1 ] || fail "missing ${MISSING[*]}"
    fi
    DETAIL="all present"
}

# -- 2. rootfs --------------------------------------------------------------------------------
rootfs() {
    if [ "$DRY_RUN" = 0 ] && "$PODMAN" image exists "$ROOTFS_IMAGE"; then DETAIL="$ROOTFS_IMAGE present, kept"; return; fi
    x debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" \
        || fail "debootstrap from $DEBIAN_MIRROR"
    if [ "$DRY_RUN" = 1 ]; then
        printf '    $ tar -C %q -c . | %q import - %q\n' "$WORK/rootfs" "$PODMAN" "$ROOTFS_IMAGE"
    else
        tar -C "$WORK/rootfs" -c . | "$PODMAN" import - "$ROOTFS_IMAGE" >>"$LOG" 2>&1 || fail "podman import"
        rm -rf "$WORK/rootfs"
    fi
    DETAIL="$ROOTFS_IMAGE imported"
}

# -- 3. base images ---------------------------------------------------------------------------
base_images() {
    x "$PODMAN" build --build-arg ROOTFS="$ROOTFS_IMAGE" -f "$ROOT/docker/local/base.Containerfile" \
        -t "$BASE_IMAGE" "$ROOT/docker/local" || fail "building $BASE_IMAGE"
    x "$PODMAN" build --build-arg ROOTFS="$ROOTFS_IMAGE" -f "$ROOT/docker/local/postgres.Containerfile" \
        -t "$POSTGRES_IMAGE" "$ROOT" || fail "building $POSTGRES_IMAGE"
    DETAIL="$BASE_IMAGE, $POSTGRES_IMAGE"
}

# -- 4. wheelhouse ----------------------------------------------------------------------------
wheelhouse() {
    local psycopg2
    psycopg2=$(sed -n 's/^ARG PSYCOPG2_VERSION=//p' "$ROOT/docker/Dockerfile")
    [ -n "$psycopg2" ] || fail "no ARG PSYCOPG2_VERSION in docker/Dockerfile"
    [ "$DRY_RUN" = 1 ] || mkdir -p "$WHEELHOUSE"
    x "$PYTHON" -m pip download --disable-pip-version-check -d "$WHEELHOUSE" -r "$ROOT/requirements.txt" \
        "psycopg2-binary==$psycopg2" "setuptools>=68" || fail "pip download into $WHEELHOUSE"
    [ "$DRY_RUN" = 1 ] || DETAIL="$(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1) in $WHEELHOUSE"
}

# -- 5. the project image ---------------------------------------------------------------------
image() {
    x "$PODMAN" build -f "$ROOT/docker/Dockerfile" --ignorefile "$ROOT/docker/Dockerfile.dockerignore" \
        --build-arg RAY_IMAGE="$BASE_IMAGE" --build-context wheels="$WHEELHOUSE" -t "$IMAGE" "$ROOT" \
        || fail "building $IMAGE"
    [ "$DRY_RUN" = 1 ] || DETAIL="$IMAGE, $("$PODMAN" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
}

# -- 6. up --------------------------------------------------------------------------------------
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up() {
    if [ "$DRY_RUN" = 0 ]; then
        DASHBOARD_PORT=$(free_port); CLIENT_PORT=$(free_port); MLFLOW_PORT=$(free_port)
        RAY_AUTH_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
        umask 077
        cat >"$WORK/stack.env" <<EOF
RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN
POSTGRES_USER=mlflow
POSTGRES_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
POSTGRES_DB=mlflow
POSTGRES_IMAGE=$POSTGRES_IMAGE
SKIPNET_IMAGE=$IMAGE
SKIPNET_WORKERS=1
SKIPNET_SHM_SIZE=2gb
SKIPNET_BIND=127.0.0.1
SKIPNET_DASHBOARD_PORT=$DASHBOARD_PORT
SKIPNET_CLIENT_PORT=$CLIENT_PORT
SKIPNET_MLFLOW_PORT=$MLFLOW_PORT
SKIPNET_DATA_DIR=$WORK/data
SKIPNET_CHECKPOINT_DIR=$WORK/checkpoints
EOF
        umask 022
        export RAY_AUTH_TOKEN
    else
        say "    (writes \$WORK/stack.env: a fresh RAY_AUTH_TOKEN and POSTGRES_PASSWORD, the images above, free ports on 127.0.0.1)"
    fi
    [ "$DRY_RUN" = 1 ] || STACK_UP=1
    compose up -d --no-build || fail "podman-compose up"
    DETAIL="dashboard 127.0.0.1:$DASHBOARD_PORT, Ray client 127.0.0.1:$CLIENT_PORT, MLflow 127.0.0.1:$MLFLOW_PORT"
}

# -- 7. ready ---------------------------------------------------------------------------------
NODES_ALIVE='import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))'
ready() {
    x "$PYTHON" "$ROOT/docker/smoke_check.py" ready --dashboard "http://127.0.0.1:$DASHBOARD_PORT" \
        --mlflow "http://127.0.0.1:$MLFLOW_PORT" --timeout 300 || fail "the stack did not come up"
    local nodes=0 deadline=$(( SECONDS + 120 ))
    if [ "$DRY_RUN" = 1 ]; then
        x "$PODMAN" exec "$HEAD" python -c "$NODES_ALIVE"
    else
        while [ "$nodes" != 2 ]; do
            [ $SECONDS -lt $deadline ] || fail "$nodes Ray nodes alive after 120 s, expected 2 (head + worker)"
            sleep 3
            nodes=$("$PODMAN" exec "$HEAD" python -c "$NODES_ALIVE" 2>>"$LOG" | tail -n 1)
        done
    fi
    local container
    for container in "$HEAD" "$POSTGRES" "$MLFLOW"; do
        x "$PODMAN" healthcheck run "$container" || fail "the health check of $container"
    done
    DETAIL="2 Ray nodes alive; health checks of ray-head, postgres, mlflow pass"
}

# -- 8-9. submit, job ---------------------------------------------------------------------------
submit() {
    (cd "$ROOT" && x "$SKIPNET" submit "$QUICKSTART" --address "http://127.0.0.1:$DASHBOARD_PORT" \
        --set mlflow.tracking_uri=http://mlflow:5000 --set storage_path=/home/ray/shared/searches) \
        || fail "skipnet submit"
    [ "$DRY_RUN" = 1 ] && return
    JOB_ID=$(grep -m 1 -o '^raysubmit_[A-Za-z0-9]*' "$LOG")      # the id Ray's Jobs API gave
    [ -n "$JOB_ID" ] || fail "skipnet submit printed no job id"
    DETAIL="job $JOB_ID"
}
job() {
    x "$PYTHON" "$ROOT/docker/smoke_check.py" job "$JOB_ID" --dashboard "http://127.0.0.1:$DASHBOARD_PORT" \
        --timeout "$JOB_TIMEOUT" || { "$SKIPNET" logs "$JOB_ID" --address "http://127.0.0.1:$DASHBOARD_PORT" >>"$LOG" 2>&1; fail "job $JOB_ID"; }
    [ "$DRY_RUN" = 1 ] || DETAIL=$(tail -n 1 "$LOG")
}

cli_service() {   # the README's `compose run --rm skipnet ...`: the CLI inside the stack's network
    compose --profile cli run --rm -T skipnet status "$JOB_ID" --address http://ray-head:8265 \
        || fail "compose run --rm skipnet status"
    [ "$DRY_RUN" = 1 ] && return
    [ "$(tail -n 1 "$LOG")" = SUCCEEDED ] || fail "the skipnet service saw the job as $(tail -n 1 "$LOG")"
    DETAIL="the skipnet service (in the network) sees $JOB_ID SUCCEEDED"
}

# -- 10. MLflow ---------------------------------------------------------------------------------
SQL_RUNS="SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = '$QUICKSTART_EXPERIMENT'"
mlflow_runs() {
    x "$PYTHON" "$ROOT/docker/smoke_check.py" mlflow --mlflow "http://127.0.0.1:$MLFLOW_PORT" \
        --experiment "$QUICKSTART_EXPERIMENT" --trials "$QUICKSTART_TRIALS" --steps "$QUICKSTART_STEPS" \
        || fail "the search's runs in MLflow"
    x "$PODMAN" exec "$POSTGRES" psql -U mlflow -d mlflow -tAc "$SQL_RUNS" || fail "psql"
    [ "$DRY_RUN" = 1 ] && return
    local rest sql
    rest=$(grep -o '"runs": [0-9]*' "$LOG" | tail -n 1 | grep -o '[0-9]*$')
    sql=$(tail -n 1 "$LOG")
    [ "$rest" = "$sql" ] || fail "the REST API shows $rest runs, PostgreSQL holds $sql"
    DETAIL="$(grep '^experiment ' "$LOG" | tail -n 1); PostgreSQL holds the same $sql runs"
}

# -- 11. pareto, export -------------------------------------------------------------------------
pareto() {
    x "$SKIPNET" pareto "$QUICKSTART_EXPERIMENT" --tracking-uri "http://127.0.0.1:$MLFLOW_PORT" --output "$WORK/pareto" \
        || fail "skipnet pareto"
    x "$PYTHON" "$ROOT/docker/smoke_check.py" artifacts --mlflow "http://127.0.0.1:$MLFLOW_PORT" \
        --experiment "$QUICKSTART_EXPERIMENT" || fail "the front's files in MLflow's artifact store"
    [ "$DRY_RUN" = 1 ] || DETAIL="$(grep -m 1 ' trials, ' "$LOG"); $(tail -n 1 "$LOG")"
}
export_knee() {
    x "$SKIPNET" export "$QUICKSTART_EXPERIMENT" --knee -o "$WORK/best.yaml" --tracking-uri "http://127.0.0.1:$MLFLOW_PORT" \
        || fail "skipnet export"
    [ "$DRY_RUN" = 1 ] || { test -s "$WORK/best.yaml" || fail "no $WORK/best.yaml"; DETAIL=$(grep -m 1 -- '-> ' "$LOG"); }
}

# -- 12. down -----------------------------------------------------------------------------------
leftovers() {
    local label=io.podman.compose.project=$PROJECT
    { "$PODMAN" ps -aq --filter "label=$label"
      "$PODMAN" volume ls -q --filter "label=$label"
      "$PODMAN" network ls -q --filter "name=^${PROJECT}_"
      "$PODMAN" pod ls -q --filter "name=^pod_${PROJECT}\$"; } 2>/dev/null | wc -l
}
down() {
    compose down -v -t 20 || fail "podman-compose down"
    [ "$DRY_RUN" = 1 ] && return
    STACK_UP=0
    local left
    left=$(leftovers)
    [ "$left" = 0 ] || fail "$left containers, volumes, networks or pods of $PROJECT left behind"
    DETAIL="no container, pod, network or volume of $PROJECT left"
}
on_exit() {
    local rc=$?
    if [ "$STACK_UP" = 1 ]; then
        say "tearing down after a failure"
        LOG=$WORK/logs/teardown.log
        "$PODMAN_COMPOSE" --podman-path "$PODMAN" -p "$PROJECT" --env-file "$WORK/stack.env" "${COMPOSE_FILES[@]}" \
            down -v -t 20 >>"$LOG" 2>&1
        say "left behind: $(leftovers) containers, volumes, networks or pods of $PROJECT"
    fi
    if [ "$DRY_RUN" = 0 ] && [ -n "$WORK" ]; then
        if [ "$rc" = 0 ]; then rm -rf "$WORK"; else say "logs kept in $WORK/logs"; fi
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$SECONDS
[ "$DRY_RUN" = 1 ] && say "dry run: the commands docker/smoke.sh would run (\$WORK is a fresh temp dir)"
step prerequisites "podman, podman-compose, the host's skipnet" prerequisites
if [ "$DRY_RUN" = 0 ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/skipnet-smoke.XXXXXX")
    mkdir -p "$WORK/logs" "$WORK/data" "$WORK/checkpoints"
fi
step rootfs "a Debian bookworm root file system as $ROOTFS_IMAGE" rootfs
step base-images "docker/local/: $BASE_IMAGE and $POSTGRES_IMAGE" base_images
step wheelhouse "the wheels of requirements.txt in $WHEELHOUSE" wheelhouse
step image "docker/Dockerfile as $IMAGE" image
step up "the compose stack $PROJECT (CPU)" up
step ready "MLflow, the Jobs API, 2 Ray nodes, health checks" ready
step submit "the quickstart from the host" submit
step job "the job to succeed (at most $JOB_TIMEOUT s)" job
step cli "the compose skipnet service: status of the job" cli_service
step mlflow "the search's runs through the MLflow REST API and in PostgreSQL" mlflow_runs
step pareto "skipnet pareto against the stack's MLflow" pareto
step export "skipnet export --knee against the stack's MLflow" export_knee
step down "tear the stack down" down
if [ "$DRY_RUN" = 1 ]; then
    if [ "${#MISSING[@]}" -gt 0 ]; then
        echo "smoke: dry run: missing ${#MISSING[@]} prerequisite(s): ${MISSING[*]}" >&2
        exit 1
    fi
    say "dry run: all prerequisites present"
    exit 0
fi
say "passed in $(( SECONDS - START )) s"
