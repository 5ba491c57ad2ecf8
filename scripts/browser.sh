#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the browser tests when they are missing.
# Nothing downloads a browser at test time: the tests drive /usr/bin/chromium through
# /usr/bin/chromedriver (Selenium), both from the distribution's packages.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "browser.sh: no apt-get here; install chromium and chromedriver yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q > /dev/null
$sudo apt-get install -y -q chromium chromium-driver > /dev/null
