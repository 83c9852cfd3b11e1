#!/usr/bin/env bash
# The ocad-serve end-to-end tests run the real Prometheus and Alertmanager (Debian packages
# `prometheus` and `prometheus-alertmanager`). Install them only when a binary is missing;
# the packaged services are not started (the tests start their own on loopback ports).
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have prometheus && { have prometheus-alertmanager || have alertmanager; }; then
    exit 0
fi
if ! have apt-get; then
    echo "ensure-prometheus: prometheus / alertmanager missing and no apt-get here; install them by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if have sudo; then SUDO="sudo -n"; else echo "ensure-prometheus: need root (or sudo) to apt-get install" >&2; exit 1; fi
fi
echo "ensure-prometheus: installing prometheus prometheus-alertmanager (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
