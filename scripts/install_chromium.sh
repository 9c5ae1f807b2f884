#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report rendering test, idempotently.
# Skips when /usr/bin/chromium exists; needs root or sudo otherwise. Never fails the build: without
# Chromium the HTML rendering test skips with its reason.
set -uo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_chromium: not root and no sudo; the HTML rendering test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 || true
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || echo "install_chromium: apt-get install chromium failed; the HTML rendering test will be skipped" >&2
fi
exit 0
