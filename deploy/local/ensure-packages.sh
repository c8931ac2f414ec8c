#!/usr/bin/env bash
# Installs the Debian packages the local environment and the tests need, only when they are
# missing: Dovecot (the IMAP stand-in) and Prometheus (`promtool test rules` and the scrape
# test). Does nothing, quickly, when both are present.
set -euo pipefail
missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
  exit 1
fi

# The packages ship services (dovecot, prometheus on :9090) that their maintainer scripts start
# through invoke-rc.d unless /usr/sbin/policy-rc.d forbids it. Container images usually have one
# that does; a CI machine may not. The tests start their own instances by PID, so a system
# service is never wanted: deny starts for the duration of the install, and remove only the
# policy this script wrote.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  own_policy=$policy
  trap 'rm -f "$own_policy"' EXIT
  printf '#!/bin/sh\n# written by mailsyncd deploy/local/ensure-packages.sh during apt-get install\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
fi

echo "installing ${missing[*]}" >&2
apt-get update -qq
# --no-install-recommends: prometheus recommends prometheus-node-exporter, another service.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
