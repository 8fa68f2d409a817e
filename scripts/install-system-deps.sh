#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real (prometheus with promtool,
# prometheus-alertmanager, squid-openssl for the proxy tests, chromium for the browser tests, podman with buildah, runc and
# mmdebstrap for the container image test) when they are missing and we are root. As
# another user it only says what is missing; the tests that need them then skip with that
# reason.
set -euo pipefail

need=()
# `make bench` (only): wrk, the load generator of the /metrics latency figures.
if [ "${1:-}" = "bench" ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# tests/test_proxy_e2e.py runs a real egress proxy: Squid, the OpenSSL build (TLS inspection).
squid -v 2>/dev/null | grep -q -- '--with-openssl' || need+=(squid-openssl)
# tests/test_browser.py drives Debian's chromium (never a browser Playwright downloads).
[ -x /usr/bin/chromium ] || need+=(chromium)
# tests/test_image.py builds the Dockerfile with podman on a base image made by mmdebstrap.
for tool in podman buildah runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]}; run as root to install them (tests needing them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system-deps: installed ${need[*]}"
