#!/usr/bin/env bash
# Quick start 1: install what is missing, then run the whole pipeline on the seed campaign.
# Extra arguments go to `tagpulse demo` (e.g. --workers 2, --html report.html).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/bootstrap.sh"
cd "$REPO"
exec "$REPO/.venv/bin/tagpulse" demo "$@"
