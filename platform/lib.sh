# Shared by platform/run and platform/test: install what Carillon needs, start and stop
# its services on loopback. Sourced, not executed. Every service keeps its data and logs
# under a directory of ours and is stopped by the script that started it.

CARILLON_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$CARILLON_ROOT/.venv"
STATE_ROOT="$CARILLON_ROOT/.run"
# Carillon starts many Python processes (workers, daphnes, relays, the suite's dozens):
# with bytecode caching off, each one compiles every module it imports from source, which
# more than doubles its start (django.setup() 5.6 s instead of 2.0 s on a 2-core machine).
# __pycache__/ is ignored by git.
unset PYTHONDONTWRITEBYTECODE

# With the seconds since the script started: where a slow run spends its time shows.
say() { printf '\033[1m==> [%ds] %s\033[0m\n' "$SECONDS" "$*" >&2; }
die() { printf '\033[31mcarillon: %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root for: $* (run as root, or install sudo)"
    fi
}

# Run a command as the service's own system user when we are root: Debian's RabbitMQ
# and PostgreSQL refuse to run as root. As an ordinary user, run it as ourselves.
as_service_user() {
    local user=$1; shift
    if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# install_packages PKG...: install missing Debian packages with apt-get.
install_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        die "missing ${missing[*]}; this machine has no apt-get. Install them with your package \
manager (or run the services with docker compose -f platform/compose.yaml up) and try again."
    fi
    say "installing ${missing[*]} with apt-get"
    as_root apt-get update -qq
    # policy-rc.d-less machines would start the system-wide services; we run our own.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

find_python() {
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    die "Carillon needs Python 3.11 or newer (apt-get install python3)."
}

# ensure_venv REQUIREMENTS_FILE: a .venv with exactly the pinned packages of that file.
# A stamp of the file's hash makes a second run skip the install entirely.
ensure_venv() {
    local requirements="$CARILLON_ROOT/$1" python stamp
    python=$(find_python)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating .venv with $python"
        if ! "$python" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            install_packages python3-venv
            "$python" -m venv "$VENV"
        fi
    fi
    stamp="$VENV/.installed-$(basename "$requirements" .txt)"
    # "compiled": a .venv installed before the packages were byte-compiled is done once more.
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum "$requirements" | cut -d' ' -f1) compiled" ]; then
        return 0
    fi
    say "installing $(basename "$requirements") into .venv"
    [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q --disable-pip-version-check uv
    # Compiled at install (uv does not by default): every process then loads bytecode.
    "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -r "$requirements"
    echo "$(sha256sum "$requirements" | cut -d' ' -f1) compiled" > "$stamp"
}

# service_dir NAME USER: a fresh-or-kept directory for a service's data, owned by USER.
# Under .run/ when USER can reach it there; otherwise (a checkout inside a private home
# directory) under /var/tmp, keyed by the checkout's path.
service_dir() {
    local name=$1 user=$2 dir
    dir="$STATE_ROOT/$name"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ] && ! runuser -u "$user" -- test -x "$dir" 2>/dev/null; then
        dir="/var/tmp/carillon-$(echo "$CARILLON_ROOT" | sha256sum | cut -c1-12)/$name"
        mkdir -p "$dir"
        chmod 755 "$(dirname "$dir")"
    fi
    [ "$(id -u)" = 0 ] && chown -R "$user:" "$dir"
    echo "$dir"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_port() {
    port_in_use "$1" && die "port $1 ($2) is already in use on 127.0.0.1: stop whatever \
holds it (ss -ltnp 'sport = :$1'), or choose another port in the environment."
    return 0
}

wait_for_port() { # PORT WHAT SECONDS
    local deadline=$((SECONDS + ${3:-30}))
    until port_in_use "$1"; do
        [ $SECONDS -lt $deadline ] || die "$2 did not listen on 127.0.0.1:$1 in ${3:-30}s"
        sleep 0.2
    done
}

# --- RabbitMQ ------------------------------------------------------------------------

RABBITMQ_BIN=/usr/lib/rabbitmq/bin
# The Erlang cookie the node and its CLI share: the rabbitmq user's when we are root.
[ "$(id -u)" = 0 ] && RABBITMQ_HOME=/var/lib/rabbitmq
[ -x "$RABBITMQ_BIN/rabbitmq-server" ] || RABBITMQ_BIN=$(dirname "$(command -v rabbitmq-server || echo /usr/sbin/x)")

rabbitmq() { # rabbitmq COMMAND ARGS: run a RabbitMQ CLI with our node's cookie
    as_service_user rabbitmq env HOME="${RABBITMQ_HOME:-$HOME}" "$RABBITMQ_BIN/$1" "${@:2}"
}

# start_rabbitmq NODE AMQP_PORT DIST_PORT MANAGEMENT_PORT [nowait]
# With "nowait", return once the node is launched; await_rabbitmq then waits for it
# (several nodes boot side by side).
start_rabbitmq() {
    local node=$1 port=$2 dist_port=$3 management_port=$4 nowait=${5:-} dir
    if rabbitmq_registered "$node"; then  # a leftover of a killed run
        rabbitmq rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true
    fi
    require_free_port "$port" "RabbitMQ AMQP"
    require_free_port "$management_port" "RabbitMQ management"
    dir=$(service_dir "rabbitmq-$node" rabbitmq)
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
management.tcp.ip = 127.0.0.1
management.tcp.port = $management_port
CONF
    cat "$CARILLON_ROOT/platform/rabbitmq/rabbitmq.conf" >> "$dir/rabbitmq.conf"
    # The cluster layout's nodes have settings of their own (start_rabbitmq_cluster).
    [ -z "${RABBITMQ_EXTRA_CONF:-}" ] || cat "$RABBITMQ_EXTRA_CONF" >> "$dir/rabbitmq.conf"
    cp "$CARILLON_ROOT/platform/rabbitmq/enabled_plugins" "$dir/enabled_plugins"
    [ "$(id -u)" = 0 ] && chown rabbitmq: "$dir/rabbitmq.conf" "$dir/enabled_plugins"
    say "starting RabbitMQ $node on 127.0.0.1:$port (management :$management_port)"
    as_service_user rabbitmq env HOME="${RABBITMQ_HOME:-$HOME}" \
        RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist_port" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "$RABBITMQ_BIN/rabbitmq-server" > "$dir/console.log" 2>&1 &
    [ "$nowait" = nowait ] && return 0
    await_rabbitmq "$node" "$management_port" $!
}

# Whether epmd knows NODE: a C program answers at once, where each rabbitmqctl call boots
# an Erlang VM (about a CPU-second). Without epmd on the PATH, assume it may.
rabbitmq_registered() {
    command -v epmd >/dev/null || return 0
    epmd -names 2>/dev/null | grep -q "^name ${1%@*} "
}

await_rabbitmq() { # NODE MANAGEMENT_PORT [SERVER_PID]
    local node=$1 management_port=$2 server=${3:-} dir deadline=$((SECONDS + 90))
    dir=$(service_dir "rabbitmq-$node" rabbitmq)
    # await_startup fails at once while the node is not yet registered with epmd: wait for
    # that cheaply first, then let it wait for the boot; retry should the node restart.
    until rabbitmq_registered "$node" && rabbitmq rabbitmqctl -n "$node" -q await_startup --timeout 60 >/dev/null 2>&1; do
        if { [ -n "$server" ] && ! kill -0 "$server" 2>/dev/null; } || [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$dir/console.log" >&2
            die "RabbitMQ $node did not start; its logs are in $dir"
        fi
        sleep 0.5
    done
    wait_for_port "$management_port" "RabbitMQ management" 30
}

stop_rabbitmq() { # NODE
    rabbitmq rabbitmqctl -n "$1" -q stop >/dev/null 2>&1 || true
    # epmd is shared by every node on the host: stop it only when it serves none.
    if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q "^name "; then
        epmd -kill >/dev/null 2>&1 || true
    fi
}

# --- RabbitMQ cluster (the cluster layout) -------------------------------------------
# COUNT nodes NAME-1@localhost … on one machine, each with its own ports: node i listens
# on AMQP_PORT + (i-1)*STEP, management MANAGEMENT_PORT + (i-1)*STEP, distribution
# its AMQP port + 20000. They share one Erlang cookie because start_rabbitmq runs every
# node (and every CLI call) with the same HOME, the rabbitmq user's; nodes with different
# cookies refuse to talk to each other.

rabbitmq_cluster_node() { echo "$1-$2@localhost"; }  # NAME INDEX

# rabbitmq_cluster_urls PREFIX SUFFIX AMQP_PORT STEP COUNT: PREFIX<port>SUFFIX per node, joined by ';'
rabbitmq_cluster_urls() {
    local prefix=$1 suffix=$2 port=$3 step=$4 count=$5 i urls=()
    for ((i = 0; i < count; i++)); do urls+=("$prefix$((port + i * step))$suffix"); done
    (IFS=';'; echo "${urls[*]}")
}

# start_rabbitmq_cluster NAME AMQP_PORT MANAGEMENT_PORT STEP COUNT
start_rabbitmq_cluster() {
    local name=$1 port=$2 management_port=$3 step=$4 count=$5 i node offset
    # Boot side by side: a node that kept cluster data from an earlier run waits at start
    # for its peers, so starting them one after another could wait on each other.
    for ((i = 1; i <= count; i++)); do
        offset=$(((i - 1) * step))
        RABBITMQ_EXTRA_CONF="$CARILLON_ROOT/platform/rabbitmq/cluster.conf" \
            start_rabbitmq "$(rabbitmq_cluster_node "$name" "$i")" $((port + offset)) \
            $((port + offset + 20000)) $((management_port + offset)) nowait
    done
    for ((i = 1; i <= count; i++)); do
        await_rabbitmq "$(rabbitmq_cluster_node "$name" "$i")" $((management_port + (i - 1) * step))
    done
    for ((i = 2; i <= count; i++)); do
        rabbitmq_join "$(rabbitmq_cluster_node "$name" "$i")" "$(rabbitmq_cluster_node "$name" 1)"
    done
}

rabbitmq_join() { # NODE SEED: make NODE a member of SEED's cluster (a member already: nothing)
    local node=$1 seed=$2 log
    if rabbitmq rabbitmqctl -n "$node" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$seed\""; then
        return 0
    fi
    say "joining RabbitMQ $node to $seed's cluster"
    log="$(service_dir "rabbitmq-$node" rabbitmq)/join.log"
    # join_cluster wants a node with its app stopped and no data of its own. The CLI
    # prints the node's start-up warnings: they go to a log, shown only on failure.
    if ! { rabbitmq rabbitmqctl -n "$node" -q stop_app \
        && rabbitmq rabbitmqctl -n "$node" -q reset \
        && rabbitmq rabbitmqctl -n "$node" -q join_cluster "$seed" \
        && rabbitmq rabbitmqctl -n "$node" -q start_app \
        && rabbitmq rabbitmqctl -n "$node" -q await_startup --timeout 60; } > "$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "RabbitMQ $node could not join $seed (are both running, with one Erlang cookie?); see $log"
    fi
}

stop_rabbitmq_cluster() { # NAME COUNT
    local i
    # The last to stop is the one that boots without waiting for the others next time:
    # stop the joiners first and the seed last.
    for ((i = $2; i >= 1; i--)); do stop_rabbitmq "$(rabbitmq_cluster_node "$1" "$i")"; done
}

# --- Redis ---------------------------------------------------------------------------

start_redis() { # PORT NAME [REDIS-SERVER OPTIONS…]
    local port=$1 dir
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    require_free_port "$port" "Redis"
    dir=$(service_dir "redis-$2" "$(id -un)")
    say "starting Redis on 127.0.0.1:$port${3:+ (${*:3})}"
    # From a copy: Sentinel rewrites the configuration file of a Redis it reconfigures
    # (CONFIG REWRITE), and must not rewrite the one in the repository.
    cp "$CARILLON_ROOT/platform/redis/redis.conf" "$dir/redis.conf"
    redis-server "$dir/redis.conf" --port "$port" --dir "$dir" \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize yes "${@:3}"
    wait_for_port "$port" "Redis" 20
}

# --- Redis with Sentinel (the cluster layout) -----------------------------------------
# A primary, a replica of it and three Sentinels watching them; Carillon asks the
# Sentinels where the primary is (core/redis.py). Each start begins afresh with the first
# Redis as primary: a failover of an earlier run is forgotten, and so is what only the
# replica it promoted had.

# start_redis_sentinel PORT NAME MASTER_NAME PRIMARY_PORT
start_redis_sentinel() {
    local port=$1 master=$3 primary_port=$4 dir
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    require_free_port "$port" "Redis Sentinel"
    dir=$(service_dir "redis-$2" "$(id -un)")
    # Sentinel rewrites its configuration file (the state it learns): one per Sentinel.
    sed -e "s/@PORT@/$port/; s/@MASTER@/$master/; s/@PRIMARY_PORT@/$primary_port/" \
        "$CARILLON_ROOT/platform/redis/sentinel.conf" > "$dir/sentinel.conf"
    say "starting Redis Sentinel on 127.0.0.1:$port (watching $master at :$primary_port)"
    redis-server "$dir/sentinel.conf" --sentinel --dir "$dir" --pidfile "$dir/sentinel.pid" \
        --logfile "$dir/sentinel.log" --daemonize yes
    wait_for_port "$port" "Redis Sentinel" 20
}

# start_redis_failover NAME MASTER_NAME PRIMARY_PORT REPLICA_PORT SENTINEL_PORT…
start_redis_failover() {
    local name=$1 master=$2 primary=$3 replica=$4 i=0 sentinel
    rm -rf "$(service_dir "redis-$name-primary" "$(id -un)")" "$(service_dir "redis-$name-replica" "$(id -un)")"
    start_redis "$primary" "$name-primary"
    start_redis "$replica" "$name-replica" --replicaof 127.0.0.1 "$primary"
    for sentinel in "${@:5}"; do
        i=$((i + 1))
        start_redis_sentinel "$sentinel" "$name-sentinel-$i" "$master" "$primary"
    done
}

stop_redis_failover() { # PRIMARY_PORT REPLICA_PORT SENTINEL_PORT…: Sentinels first (no failover on the way down)
    local port
    for port in "${@:3}"; do stop_redis "$port"; done
    stop_redis "$1"
    stop_redis "$2"
}

stop_redis() { # PORT
    redis-cli -p "$1" shutdown >/dev/null 2>&1 || true
}

# --- PostgreSQL ----------------------------------------------------------------------

postgres_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    echo "${bin:-$(dirname "$(command -v pg_ctl)")}"
}

start_postgres() { # PORT NAME: a throwaway cluster, user and database "carillon", trust on loopback
    # max_connections: every worker process and web thread keeps its connection between
    # tasks and requests (CONN_MAX_AGE), and the suite runs many of each at once: the
    # default 100 ran out ("too many clients"). Production sizing: docs/operations.md.
    local port=$1 dir bin
    bin=$(postgres_bin)
    require_free_port "$port" "PostgreSQL"
    dir=$(service_dir "postgres-$2" postgres)
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_service_user postgres "$bin/initdb" -D "$dir" -U carillon --auth=trust -E UTF8 >/dev/null
    fi
    say "starting PostgreSQL on 127.0.0.1:$port"
    as_service_user postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='' -c fsync=off -c max_connections=400" \
        start >/dev/null || die "PostgreSQL did not start; see $dir/server.log"
    "$bin/psql" -h 127.0.0.1 -p "$port" -U carillon -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'carillon'" | grep -q 1 \
        || "$bin/createdb" -h 127.0.0.1 -p "$port" -U carillon carillon
    POSTGRES_DIR=$dir
}

stop_postgres() {
    [ -n "${POSTGRES_DIR:-}" ] || return 0
    as_service_user postgres "$(postgres_bin)/pg_ctl" -D "$POSTGRES_DIR" -m fast -w stop >/dev/null 2>&1 || true
}
