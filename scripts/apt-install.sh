#!/usr/bin/env bash
# Install Debian packages when they are missing; as root only, otherwise say what to run.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: $* (run: sudo apt-get install -y $*)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y --no-install-recommends "$@" >/dev/null
fi
echo "installed: $*"
