# Shared helpers for the project's scripts. Source it; do not run it.
# Installs what is missing (apt, as root or with sudo) and starts a local
# RabbitMQ bound to 127.0.0.1 when none answers at RUNWORKER_AMQP_URL.

: "${RUNWORKER_AMQP_URL:=amqp://guest:guest@127.0.0.1:5672/}"
export RUNWORKER_AMQP_URL

# The plugins the worker relies on: rabbitmq_sharding brings the x-modulus-hash exchange
# that partitions run ids (stable across broker restarts).
RUNWORKER_BROKER_PLUGINS="rabbitmq_sharding"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

apt_updated=""
apt_install() {
    # apt_install PACKAGE... : installs the packages that are not installed yet.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || { log "missing ${missing[*]} and no apt-get: install them by hand"; return 1; }
    log "installing ${missing[*]}"
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq >/dev/null || true; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { log "could not install ${missing[*]} (need root or sudo)"; return 1; }
}

# Host and port of an amqp(s):// URL.
amqp_host() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}; echo "${u%%:*}"; }
amqp_port() {
    local u=${1#*://}; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}
    case "$u" in *:*) echo "${u##*:}" ;; *) case "$1" in amqps://*) echo 5671 ;; *) echo 5672 ;; esac ;; esac
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Waits up to $2 seconds (default 60) until the pid file $1 names a live process. The node
# creates the file before it writes the pid, and `rabbitmqctl wait` gives up at once on a
# file it reads empty ({:garbage_in_pid_file, ...}): seen in CI. Call it before `wait`.
await_pid_file() {
    local f=$1 limit=$(( ${2:-60} * 10 )) pid i
    for ((i = 0; i < limit; i++)); do
        pid=$(tr -dc '0-9' 2>/dev/null <"$f" || true)
        if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then return 0; fi
        sleep 0.1
    done
    return 1
}

ensure_broker() {
    local host port
    host=$(amqp_host "$RUNWORKER_AMQP_URL"); port=$(amqp_port "$RUNWORKER_AMQP_URL")
    if port_open "$host" "$port"; then
        ensure_plugins_running
        return 0
    fi
    case "$host" in
        127.*|localhost) ;;
        *) log "no broker answers at $host:$port and it is not local: start it yourself"; return 1 ;;
    esac
    apt_install rabbitmq-server amqp-tools || return 1
    log "starting a local RabbitMQ on 127.0.0.1:$port"
    as_root rabbitmq-plugins enable --offline $RUNWORKER_BROKER_PLUGINS >/dev/null
    as_root env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" rabbitmq-server -detached >/dev/null 2>&1 || true
    local i
    for i in $(seq 1 120); do
        port_open "$host" "$port" && break
        sleep 0.5
    done
    as_root rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1 || true
    port_open "$host" "$port" || { log "the broker did not come up; see /var/log/rabbitmq/"; return 1; }
    log "broker ready"
}

# A broker that was already running may lack our plugins; enable them online when we can.
ensure_plugins_running() {
    command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
    as_root rabbitmq-plugins enable $RUNWORKER_BROKER_PLUGINS >/dev/null 2>&1 || true
}

ensure_build_deps() {
    apt_install librabbitmq-dev pkg-config || return 1
}

# Installs a PyPI package unless `check` (a shell command) already succeeds: pip, then pip
# past Debian's externally-managed guard, then the Debian package when one is named.
pip_ensure() {
    local check=$1 package=$2 debian=${3:-}
    eval "$check" >/dev/null 2>&1 && return 0
    log "installing $package (PyPI)"
    python3 -m pip install --quiet "$package" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$package" 2>/dev/null \
        || { [ -n "$debian" ] && apt_install "$debian"; } \
        || { log "could not install $package"; return 1; }
}

# The interop test drives the worker with pika, a third-party Python client, and validates
# what it sends and receives with Python jsonschema against docs/schemas; the deployment test
# validates docker-compose.yml and scripts/check-spec the contract's spec with check-jsonschema
# (which brings jsonschema and referencing along).
ensure_test_deps() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip || return 1
    pip_ensure "python3 -c 'import pika'" pika python3-pika || return 1
    pip_ensure "command -v check-jsonschema" check-jsonschema || return 1
    pip_ensure "python3 -c 'import jsonschema, referencing'" jsonschema python3-jsonschema
}

# The board test drives the live run board in a real browser: Debian's chromium and
# chromedriver, with selenium (PyPI) on the Python side.
ensure_browser_deps() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip || return 1
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt_install chromium chromium-driver || return 1
    fi
    pip_ensure "python3 -c 'import selenium'" selenium python3-selenium
}

# The HTTP API test checks docs/openapi.yaml and a live worker against it:
# openapi-spec-validator and schemathesis 4.x (PyPI).
ensure_openapi_deps() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip || return 1
    pip_ensure "command -v openapi-spec-validator" openapi-spec-validator || return 1
    pip_ensure "schemathesis --version | grep -Eq 'version 4\.'" 'schemathesis>=4,<5'
}
