#!/usr/bin/env bash
# CI for the Python package: venv (if missing), install ./python[dspy,test], ruff, pytest.
# Needs SKILL_FLEET_SERVER_BIN (or <repo>/target/debug/skill-fleet-server); with CI set, a
# missing binary or DSPy fails the server tests instead of skipping them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SKILL_FLEET_PYTHON_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e "$here[dspy,test]"

cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
"$venv/bin/mypy" --strict src/skill_fleet_worker/__init__.py src/skill_fleet_worker/__main__.py \
    src/skill_fleet_worker/context.py src/skill_fleet_worker/reporter.py \
    src/skill_fleet_worker/protocol.py src/skill_fleet_worker/client.py \
    src/skill_fleet_worker/worker.py src/skill_fleet_worker/artifacts.py

status=0
"$venv/bin/python" -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "python/ci.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit $status
