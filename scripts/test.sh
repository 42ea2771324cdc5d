#!/usr/bin/env bash
# Everything the tests need, then every test: lint (ruff check + format), types (mypy --strict, tests
# included), layering (import-linter), pytest. This is the README's test command; .ci/run calls it on a clean
# clone. Extra arguments go to pytest.
#
#   ./scripts/test.sh --fast   the fast tier (docs/development.md): the same checks and every test not marked
#                              slow; no root, no apt, no llama-server build, no test servers beyond Python's
set -euo pipefail
cd "$(dirname "$0")/.."
checks() {
  python3 -m ruff check src tests bench examples fuzz scripts
  python3 -m ruff format --check src tests bench examples fuzz scripts
  python3 -m mypy
  lint-imports --no-cache  # the layers of docs/architecture.md (contracts in pyproject.toml)
}
if [ "${1:-}" = "--fast" ]; then
  shift
  python3 -m pip install -q -e '.[test]'
  checks
  exec python3 -m pytest -m "not slow" "$@"
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # util-linux's setpriv lets the root test run drop its DAC capabilities (unreadable-file test)
  # nginx: the CDN/static server the network tests start on 127.0.0.1; aria2 and curl: bench peers
  # docker-registry: the CNCF distribution registry the oci:// tests push to and pull from
  need=()
  command -v setpriv >/dev/null || need+=(util-linux)
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
  command -v aria2c >/dev/null || need+=(aria2)
  command -v curl >/dev/null || need+=(curl)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  # skopeo and umoci: real image consumers of push --as-image
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v umoci >/dev/null || need+=(umoci)
  # squid: the real forward proxy of the HTTPS_PROXY / NO_PROXY tests
  command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need+=(squid)
  # zsh and fish: the shells the generated completion scripts are tested in (bash is already here)
  command -v zsh >/dev/null || need+=(zsh)
  command -v fish >/dev/null || need+=(fish)
  # iproute2: `ip` brings up loopback in the network namespace the air-gapped import test runs in
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi
python3 -m pip install -q -e '.[test]'
# the llama-cpp-python sdist from PyPI (real GGUF vocab files; cached in ~/.cache/model-provisioner-tests)
python3 scripts/fetch_test_assets.py
# llama-server, built once from that sdist through provisioning_mode: source (about 16 min the first time;
# kept in ~/.cache/model-provisioner-tests/engine-cache)
python3 scripts/build_test_engines.py
checks
python3 -m pytest "$@"
