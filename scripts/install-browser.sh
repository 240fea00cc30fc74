#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian (packages `chromium`, `chromium-driver`) for the dashboard's
# browser test (tests/test_dashboard.py). Idempotent: nothing is done when both binaries are already there.
# Needs root (CI containers run as root); other machines can run it under sudo or skip the browser test.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser.sh: needs root to apt-get install chromium chromium-driver (try: sudo bash $0)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel job) instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
"${APT[@]}" update -qq
"${APT[@]}" install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
/usr/bin/chromium --version
