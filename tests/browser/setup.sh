#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/test_report_browser.py). Idempotent: exits at once, and
# quietly, when a Chromium is already there. .ci/run calls it; run it by hand (as root) to run those tests locally.
set -euo pipefail

if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/browser/setup.sh: no apt-get here; install Chromium yourself (or set HF_FASTRM_CHROMIUM)." >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "tests/browser/setup.sh: installing Chromium needs root (apt-get install chromium)." >&2
        exit 1
    fi
fi
echo "tests/browser/setup.sh: installing chromium with apt-get (for the browser tests)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1
