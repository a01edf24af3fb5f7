#!/usr/bin/env bash
# Installs what tagpulse needs on a Debian machine; safe to run again, quiet unless
# something fails.
#   system: Java 17 (Kafka), Maven (fetches the Kafka jars once), Prometheus + Alertmanager
#   python: $REPO/.venv with `pip install -e '.[test]'` (redone only when pyproject.toml changes)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="${TMPDIR:-/tmp}"
say() { echo "[bootstrap] $*" >&2; }

# ---------------------------------------------------------------- system packages
java_ok() {
    command -v java >/dev/null 2>&1 || return 1
    local major
    major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [ -n "$major" ] && [ "$major" -ge 17 ]
}

missing=()
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# headless Chromium renders the HTML report in its test (a person's view of the page)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
    fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; }; then
        say "cannot install ${missing[*]} (no apt-get or no root); install them yourself. Continuing without them."
    else
        apt_log="$(mktemp "$LOG_DIR/tagpulse-apt.XXXXXX.log")"
        # Debian's prometheus packages start a system service on :9090 when they can; we run our
        # own instance on our own port, so keep services from starting during the install.
        policy=/usr/sbin/policy-rc.d
        added_policy=""
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added_policy=1
        fi
        if { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
                --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
            rm -f "$apt_log"
        else
            say "apt-get install ${missing[*]} failed; last lines of $apt_log:"
            tail -n 20 "$apt_log" >&2
            say "continuing: tagpulse says what is still missing when it needs it"
        fi
        if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi
    fi
fi

# ---------------------------------------------------------------- python venv
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON="$candidate"; break
        fi
    done
fi
VENV="$REPO/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    if [ -z "$PYTHON" ]; then
        say "tagpulse needs Python 3.11 or newer (python3); none found"; exit 1
    fi
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        say "python3 -m venv failed: install the venv module (apt-get install python3-venv)"; exit 1
    fi
fi

stamp="$VENV/.tagpulse-installed"
want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/tagpulse" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    pip_log="$(mktemp "$LOG_DIR/tagpulse-pip.XXXXXX.log")"
    if { "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"; } >"$pip_log" 2>&1; then
        echo "$want" >"$stamp"
        rm -f "$pip_log"
    else
        say "pip install -e '.[test]' failed; last lines of $pip_log:"
        tail -n 30 "$pip_log" >&2
        exit 1
    fi
fi
