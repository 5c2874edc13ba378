#!/bin/sh
# Make sure a Chromium is installed for the browser-chat test (tests/promptflow/test_browser_chat.py).
#
# Chromium is not on PyPI; it comes from the system's packages. Decision: install it with apt
# when this runs as root on a Debian/Ubuntu machine (CI runs `make test` as root); otherwise
# (no root, no apt) print what to do and carry on: the test then SKIPS and says why. A failing
# apt install as root fails `make test`: that is a broken machine, not a reason to skip.
# $FINETUNE_PHI_CHROMIUM names a browser binary to use instead.
set -eu

for candidate in "${FINETUNE_PHI_CHROMIUM:-}" chromium chromium-browser; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: installing chromium with apt-get (for the browser chat test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=120 chromium >/dev/null
    command -v chromium >/dev/null 2>&1
    exit 0
fi

echo "install-browser: no Chromium, and no root + apt-get to install one; the browser chat" \
    "test will be skipped. Install chromium (e.g. 'sudo apt-get install chromium') or set" \
    "FINETUNE_PHI_CHROMIUM to a Chromium/Chrome binary." >&2
exit 0
