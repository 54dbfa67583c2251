#!/usr/bin/env bash
# The API contract against the real server: Schemathesis 4 (`st run --checks all`) on the
# served OpenAPI document, once without a token and once with `--auth-token`, then a Python
# client generated from the document (openapi-python-client) creating, reading, listing and
# streaming a job (python/contract/roundtrip.py).
#
# Needs SKILL_FLEET_SERVER_BIN (or <repo>/target/debug/skill-fleet-server). Installs its tools
# into a virtual environment (SKILL_FLEET_CONTRACT_VENV, default python/.venv-contract).
# Each server runs on 127.0.0.1 port 0 with a temporary database and `[executors]` empty (no
# job runs by itself). ST_MAX_EXAMPLES (default 100) is the number of cases per operation.
# Any failure fails the script. Run it from anywhere:
#   cargo build -p skill-fleet-server && python/contract.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="${SKILL_FLEET_CONTRACT_VENV:-$here/.venv-contract}"
python="${PYTHON:-python3}"
server="${SKILL_FLEET_SERVER_BIN:-$repo/target/debug/skill-fleet-server}"
examples="${ST_MAX_EXAMPLES:-100}"

if [[ ! -x "$server" ]]; then
    echo "contract.sh: no server binary at $server (build it, or set SKILL_FLEET_SERVER_BIN)" >&2
    exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet 'schemathesis>=4,<5' 'openapi-python-client>=0.21,<1'

work="$(mktemp -d)"
pid=""
stop_server() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    fi
    pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

# Starts a server in $work/$1 with the extra arguments; sets $pid and $url.
start_server() {
    local dir="$work/$1"
    shift
    mkdir -p "$dir"
    printf '[executors]\n' >"$dir/server.toml"
    "$server" --bind 127.0.0.1:0 --database "$dir/db.sqlite" --data-dir "$dir/data" \
        --config "$dir/server.toml" "$@" >"$dir/server.log" 2>&1 &
    pid=$!
    url=""
    for _ in $(seq 1 300); do
        url="$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$dir/server.log" | head -n 1 | cut -d' ' -f3 || true)"
        [[ -n "$url" ]] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "contract.sh: the server exited:" >&2
            cat "$dir/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "contract.sh: the server did not start listening:" >&2
    cat "$dir/server.log" >&2
    exit 1
}

# Runs Schemathesis against the server at $url; extra arguments go to `st run`.
schemathesis() {
    local name="$1"
    shift
    echo "== schemathesis ($name): $url, $examples examples per operation =="
    local started=$SECONDS
    # Every check runs (`checks.enabled = true` in contract/schemathesis.toml, the same as
    # `--checks all`, which on the command line would also override the one per-operation
    # exclusion there).
    (cd "$here/contract" && "$venv/bin/st" run "$url/api/v1/openapi.json" \
        --max-examples "$examples" --no-color --seed 1 "$@")
    echo "schemathesis ($name): $((SECONDS - started)) s"
}

start_server open
schemathesis "no token"
stop_server

token="contract-$RANDOM$RANDOM"
start_server token --auth-token "$token"
schemathesis "token" -H "Authorization: Bearer $token"
stop_server

start_server roundtrip
echo "== generated client round trip: $url =="
"$venv/bin/python" "$here/contract/roundtrip.py" "$url" "$work/client"
stop_server
