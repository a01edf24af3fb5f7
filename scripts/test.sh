#!/usr/bin/env bash
# Quick start 2: install what is missing, then run the test suite against a real Kafka broker
# (started by the tests on free ports, in a temporary TAGPULSE_HOME; jars cached in
# $TAGPULSE_CACHE, default ~/.cache/tagpulse). Arguments go to pytest (default: everything).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/bootstrap.sh"
cd "$REPO"
exec "$REPO/.venv/bin/pytest" -q "$@"
