#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/test_report_browser.py: the HTML report opened in a real
# headless browser). `make test` and .ci/run call it; it says what it installs and why before it does, and it never
# fails the test run: without root (or password-less sudo), apt-get or network it prints one line and the browser
# tests are skipped with the reason. Quiet when a Chromium is already there (or HF_FASTRM_CHROMIUM names one).
# HF_FASTRM_SKIP_BROWSER_SETUP=1 installs nothing (the browser tests are then skipped unless a Chromium is there).
set -uo pipefail

NAME="tests/browser/setup.sh"
SKIP="the browser tests (tests/test_report_browser.py) will be skipped"

if [ -n "${HF_FASTRM_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
    || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "${HF_FASTRM_SKIP_BROWSER_SETUP:-0}" = "1" ]; then
    echo "$NAME: HF_FASTRM_SKIP_BROWSER_SETUP=1, not installing Chromium; $SKIP."
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$NAME: no apt-get here to install Chromium; $SKIP (install Chromium yourself or set HF_FASTRM_CHROMIUM)."
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "$NAME: installing Chromium needs root (apt-get install chromium); $SKIP."
        exit 0
    fi
fi
echo "$NAME: installing Debian's 'chromium' package with ${SUDO:+sudo }apt-get (several hundred MB on disk)"
echo "$NAME: the browser tests open the HTML report in a real headless Chromium. Opt out: HF_FASTRM_SKIP_BROWSER_SETUP=1"
export DEBIAN_FRONTEND=noninteractive
APT_OPTIONS=(-o Acquire::Retries=0 -o Acquire::http::Timeout=20 -o Acquire::https::Timeout=20)
LOG="$(mktemp "${TMPDIR:-/tmp}/hf-fastrm-chromium-setup.XXXXXX")"
if $SUDO apt-get "${APT_OPTIONS[@]}" update -qq >"$LOG" 2>&1 \
    && $SUDO apt-get "${APT_OPTIONS[@]}" install -y -qq --no-install-recommends chromium >>"$LOG" 2>&1 \
    && command -v chromium >/dev/null 2>&1; then
    echo "$NAME: installed $(chromium --version 2>/dev/null || echo chromium)."
    rm -f "$LOG"
else
    echo "$NAME: apt-get could not install chromium (no network or no Debian package? log: $LOG); $SKIP."
fi
exit 0
