#!/usr/bin/env bash
# System packages the embedded stack and the tests can use, all optional: Prometheus (the stack skips it when
# absent) and chromium + chromium-driver (the review page's browser test skips without them). A failure here
# warns instead of failing the install.
set -u
missing=()
if ! { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }; then
  missing+=(prometheus)
fi
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  missing+=(chromium chromium-driver)
fi
if [ "${#missing[@]}" = "0" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "install: installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "install: WARNING: apt-get could not install ${missing[*]}; the stack runs without Prometheus and" \
         "the browser test is skipped" >&2
  fi
else
  echo "install: ${missing[*]} not found and not root on Debian; the stack runs without Prometheus and the" \
       "browser test is skipped" >&2
fi
exit 0
