#!/usr/bin/env bash
# What tests/test_site.py needs on top of `pip install -e .`: the `site` and `site-test` extras and headless
# Chromium with its chromedriver from the OS packages (never a browser download). Idempotent; run it inside the
# CI virtual environment. Without apt, or when the install fails, it says so and CI goes on: the browser tests
# then skip with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -m pip install -q -e ".[site,site-test]"; then
    echo "site-deps: pip could not install the site extras" >&2
    exit 1
fi
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "site-deps: $(chromium --version 2>/dev/null) already installed"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
        echo "site-deps: installed $(chromium --version 2>/dev/null)"
    else
        echo "site-deps: apt-get could not install chromium; the browser tests will skip" >&2
    fi
else
    echo "site-deps: no apt-get (or not root); the browser tests will skip unless Chromium is installed" >&2
fi
exit 0
