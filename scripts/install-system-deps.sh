#!/usr/bin/env bash
# System packages the embedded stack can use. Prometheus is optional for the stack (it is skipped when
# absent), so a failure here warns instead of failing the install.
set -u
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "install: installing prometheus (apt)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "install: WARNING: apt-get could not install prometheus; the stack will run without it" >&2
  fi
else
  echo "install: prometheus not found and not root on Debian; the stack will run without it" >&2
fi
exit 0
