# Shared by platform/run and platform/test: install what Carillon needs, start and stop
# its services on loopback. Sourced, not executed. Every service keeps its data and logs
# under a directory of ours and is stopped by the script that started it.

CARILLON_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$CARILLON_ROOT/.venv"
STATE_ROOT="$CARILLON_ROOT/.run"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
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
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum "$requirements" | cut -d' ' -f1)" ]; then
        return 0
    fi
    say "installing $(basename "$requirements") into .venv"
    [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q --disable-pip-version-check uv
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r "$requirements"
    sha256sum "$requirements" | cut -d' ' -f1 > "$stamp"
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
    rabbitmq rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true  # a leftover of a killed run
    require_free_port "$port" "RabbitMQ AMQP"
    require_free_port "$management_port" "RabbitMQ management"
    dir=$(service_dir "rabbitmq-$node" rabbitmq)
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
management.tcp.ip = 127.0.0.1
management.tcp.port = $management_port
CONF
    cat "$CARILLON_ROOT/platform/rabbitmq/rabbitmq.conf" >> "$dir/rabbitmq.conf"
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

await_rabbitmq() { # NODE MANAGEMENT_PORT [SERVER_PID]
    local node=$1 management_port=$2 server=${3:-} dir deadline=$((SECONDS + 90))
    dir=$(service_dir "rabbitmq-$node" rabbitmq)
    # await_startup fails at once while the node is not yet registered with epmd: retry.
    until rabbitmq rabbitmqctl -n "$node" -q await_startup --timeout 10 >/dev/null 2>&1; do
        if { [ -n "$server" ] && ! kill -0 "$server" 2>/dev/null; } || [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$dir/console.log" >&2
            die "RabbitMQ $node did not start; its logs are in $dir"
        fi
        sleep 1
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

# --- Redis ---------------------------------------------------------------------------

start_redis() { # PORT NAME
    local port=$1 dir
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    require_free_port "$port" "Redis"
    dir=$(service_dir "redis-$2" "$(id -un)")
    say "starting Redis on 127.0.0.1:$port"
    redis-server "$CARILLON_ROOT/platform/redis/redis.conf" --port "$port" --dir "$dir" \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize yes
    wait_for_port "$port" "Redis" 20
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
    local port=$1 dir bin
    bin=$(postgres_bin)
    require_free_port "$port" "PostgreSQL"
    dir=$(service_dir "postgres-$2" postgres)
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_service_user postgres "$bin/initdb" -D "$dir" -U carillon --auth=trust -E UTF8 >/dev/null
    fi
    say "starting PostgreSQL on 127.0.0.1:$port"
    as_service_user postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='' -c fsync=off" \
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
