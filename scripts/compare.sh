#!/usr/bin/env bash
# Runs the same rookery-bench scenarios against Rookery, Prosody and ejabberd on this machine, one
# after the other in one run, each server a fresh local process on loopback with shapers and rate
# limits off and in-band registration on. Writes BENCHMARKS.md (medians of RUNS runs).
#
#   scripts/compare.sh            full sizes (several minutes)
#   QUICK=1 scripts/compare.sh    small sizes, to check the setup
#   SERVERS="rookery prosody" scripts/compare.sh
#
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d /tmp/rookery-compare.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
SERVERS=${SERVERS:-"rookery prosody ejabberd"}
RUNS=${RUNS:-3}
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
    pkill -f "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

if [ -n "${QUICK:-}" ]; then
    LOGIN="--count 50 --concurrency 4"; IDLE="--sessions 200"
    CHAT="--pairs 20 --messages 100 --window 10"; OPEN="--pairs 20 --rate 500 --duration 3"; OPEN5="--pairs 20 --rate 2000 --duration 3"
    OFFLINE="--pairs 20 --messages 20"
    MUC="--rooms 4 --occupants 10 --messages 50 --window 10"; SCALE="10:500 100:50"
else
    LOGIN="--count 500 --concurrency 8"; IDLE="--sessions 2000"
    CHAT="--pairs 500 --messages 200 --window 10"; OPEN="--pairs 100 --rate 1000 --duration 10"; OPEN5="--pairs 100 --rate 5000 --duration 10"
    OFFLINE="--pairs 200 --messages 50"
    MUC="--rooms 10 --occupants 50 --messages 400 --window 10"
    # Rookery alone: one room of N occupants, M messages (N × M deliveries per run).
    SCALE="10:10000 100:1000 1000:100"
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need prosody || ! need ejabberdctl; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody ejabberd >/dev/null
fi
cargo build --release --bins -q
BENCH="$ROOT/target/release/rookery-bench"

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "nothing listens on $1" >&2
    return 1
}

# --- the servers: each sets PORT and SERVER_PID ---------------------------------------------------
# Ports below the ephemeral range (32768-60999 here): the load generator's thousands of outgoing
# connections would otherwise sometimes hold a server's port when it restarts.

start_rookery() {
    local dir="$WORK/rookery"
    mkdir -p "$dir"
    cat >"$dir/rookery.toml" <<EOF
[server]
domain = "localhost"
data_dir = "$dir/data"
log_level = "warn"
[c2s]
listen = "127.0.0.1:15222"
direct_tls_listen = ""
require_encryption = false
[tls]
cert = "$dir/localhost.crt"
key = "$dir/localhost.key"
[registration]
allow = true
[auth]
# The iteration count the other servers use by default, so logins cost the same.
scram_iterations = 4096
failure_delay_ms = 0
[muc]
max_occupants = 1000
EOF
    "$ROOT/target/release/rookery" serve --config "$dir/rookery.toml" >"$dir/log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    PORT=15222
    MECH=scram
    wait_port $PORT
}

start_prosody() {
    local dir="$WORK/prosody"
    mkdir -p "$dir/data"
    cat >"$dir/prosody.cfg.lua" <<EOF
daemonize = false
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
certificates = "$dir"
c2s_ports = { 15322 }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = {}
legacy_ssl_ports = {}
http_ports = {}
https_ports = {}
allow_registration = true
min_seconds_between_registrations = 0
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
log = { { levels = { min = "error" }, to = "file", filename = "$dir/log" } }
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "register", "offline", "posix" }
modules_disabled = { "limits", "s2s" }
limits = { c2s = { rate = "1000mb/s" } }
VirtualHost "localhost"
Component "conference.localhost" "muc"
EOF
    # Prosody offers STARTTLS only with a certificate for the host.
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -keyout "$dir/localhost.key" -out "$dir/localhost.crt" 2>/dev/null
    chown -R prosody:prosody "$dir"
    su prosody -s /bin/sh -c "ulimit -n $(ulimit -Hn); exec prosody --config $dir/prosody.cfg.lua" >"$dir/out" 2>&1 &
    PIDS+=("$!")
    PORT=15322
    MECH=scram1 # Prosody 0.12 offers SCRAM-SHA-1, not SCRAM-SHA-256
    wait_port $PORT
    SERVER_PID=$(cat "$dir/prosody.pid" 2>/dev/null || pgrep -f "prosody.*$dir" | tail -1)
}

start_ejabberd() {
    local dir="$WORK/ejabberd"
    mkdir -p "$dir/db" "$dir/logs"
    cat >"$dir/ejabberd.yml" <<EOF
hosts: [localhost]
loglevel: error
# No limit on registrations from one address, and a certificate for STARTTLS.
registration_timeout: infinity
certfiles:
  - "$dir/localhost.pem"
auth_method: internal
auth_password_format: scram
shaper: {}
listen:
  - port: 15422
    ip: "127.0.0.1"
    # The default backlog (5) drops connection attempts under the load generator's bursts.
    backlog: 1024
    module: ejabberd_c2s
    starttls: true
    max_stanza_size: 262144
    shaper: none
    access: c2s
acl: {}
access_rules:
  register:
    allow: all
  c2s:
    allow: all
shaper_rules: {}
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_offline: {}
  mod_register:
    ip_access: all
    access: register
  mod_muc:
    access_create: all
    max_users: 1000
    history_size: 0
    default_room_options:
      max_users: 1000
EOF
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -keyout "$dir/localhost.key" -out "$dir/localhost.crt" 2>/dev/null
    cat "$dir/localhost.crt" "$dir/localhost.key" >"$dir/localhost.pem"
    # Our own ejabberdctl.cfg: the system one sets the configuration path unconditionally.
    cat >"$dir/ejabberdctl.cfg" <<EOF
EJABBERD_CONFIG_PATH=$dir/ejabberd.yml
EJABBERD_PID_PATH=$dir/ejabberd.pid
ERLANG_NODE=bench@localhost
EOF
    chown -R ejabberd:ejabberd "$dir"
    su ejabberd -s /bin/sh -c "ulimit -n $(ulimit -Hn); HOME=$dir ejabberdctl --ctl-config $dir/ejabberdctl.cfg --config $dir/ejabberd.yml --logs $dir/logs --spool $dir/db foreground" >"$dir/out" 2>&1 &
    PIDS+=("$!")
    PORT=15422
    MECH=scram1 # the Debian build's default SCRAM hash
    wait_port $PORT
    SERVER_PID=$(pgrep -f "beam.*$dir" | head -1)
}

# Stops the server and waits until it has exited (a server that is still flushing would hold its
# data and port when the next one starts).
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    cleanup
    PIDS=()
    sleep 1
}

# --- the runs ---------------------------------------------------------------------------------------

run() { # server scenario args...  (RUNS times)
    local server=$1
    shift
    for run in $(seq "$RUNS"); do
        local out
        if out=$("$BENCH" --server "127.0.0.1:$PORT" --register --prefix "b$run$RANDOM" --mech "$MECH" --pid "$SERVER_PID" "$@" 2>"$WORK/err"); then
            echo "{\"server\":\"$server\",\"run\":$run,\"args\":\"$*\",\"result\":$out}" >>"$RESULTS"
        else
            echo "$server $*: $(cat "$WORK/err")" >&2
        fi
    done
}

for server in $SERVERS; do
    echo "== $server" >&2
    if ! "start_$server"; then
        echo "skipping $server: it did not start (see $WORK/$server)" >&2
        cleanup
        PIDS=()
        continue
    fi
    run "$server" login $LOGIN
    run "$server" --tls login $LOGIN
    run "$server" chat $CHAT
    run "$server" chat $OPEN
    run "$server" chat $OPEN5
    run "$server" offline $OFFLINE
    run "$server" muc $MUC
    if [ "$server" = rookery ]; then
        for size in $SCALE; do
            run "$server" muc --rooms 1 --occupants "${size%:*}" --messages "${size#*:}" --window 10
        done
    fi
    stop_server
    # Memory per idle session: each run on a fresh server (memory a server freed stays resident, so
    # a second run on the same process would measure nothing), with the accounts registered by an
    # earlier process (registration hashes passwords, which says nothing about sessions).
    for tls in "" "--tls"; do
        for run in $(seq "$RUNS"); do
            local_prefix="idle$run$RANDOM"
            if ! "start_$server"; then echo "$server did not start for an idle run" >&2; cleanup; PIDS=(); continue; fi
            "$BENCH" --server "127.0.0.1:$PORT" --register --prefix "$local_prefix" --mech "$MECH" idle $IDLE >/dev/null 2>"$WORK/err" || cat "$WORK/err" >&2
            stop_server
            if ! "start_$server"; then echo "$server did not restart for an idle run" >&2; cleanup; PIDS=(); continue; fi
            sleep 2
            if out=$("$BENCH" --server "127.0.0.1:$PORT" --prefix "$local_prefix" --mech "$MECH" --pid "$SERVER_PID" $tls idle $IDLE 2>"$WORK/err"); then
                echo "{\"server\":\"$server\",\"run\":$run,\"args\":\"$tls idle $IDLE\",\"result\":$out}" >>"$RESULTS"
            else
                echo "$server $tls idle: $(cat "$WORK/err")" >&2
            fi
            stop_server
        done
    done
done

python3 "$ROOT/scripts/benchmarks_table.py" "$RESULTS" >"$ROOT/BENCHMARKS.md"
echo "wrote BENCHMARKS.md ($RESULTS)" >&2
