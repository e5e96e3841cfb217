#!/usr/bin/env bash
# Installs the third-party CSMS implementations the interop tests run the agent against, each in its own
# environment under .interop/ (never into the project's): they pin Django/ocpp/etc. versions of their own.
#
#   .interop/venv-ocpp-csms   ocpp-csms (PyPI): asyncio OCPP 1.6J central system library (aiohttp + ocpp)
#   .interop/venv-arthexis    arthexis (PyPI): Django/Channels CSMS, with redis==5.2.1 for channels_redis
#   .interop/node             ocpp-rpc (npm), `npm ci` from tests/interop/package-lock.json, for the
#                             strict frame validator tests/interop/ocpp_rpc_csms.mjs
#
# Each step that succeeds leaves a stamp (.interop/<name>.ok, holding the versions that step pinned), so a
# second run costs nothing. A step that fails writes its reason to .interop/<name>.failed and the script
# goes on: the test for that CSMS then reports SKIPPED with that reason (a failure on CI, where CI=true:
# tests/conftest.py). Exit status is 0 unless called with --strict. redis-server itself comes from Debian
# (.ci/run installs it with apt-get).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${EVSE_INTEROP_DIR:-$ROOT/.interop}  # the tests read the same variable (tests/interop/procs.py)
mkdir -p "$OUT"
PY=${INTEROP_PYTHON:-python3}
STRICT=0
[[ "${1:-}" == "--strict" ]] && STRICT=1
failures=0

# Pinned versions: the tests are written against these (arthexis's routes, models and operator API,
# ocpp-csms's events and request methods, ocpp-rpc's events).
OCPP_CSMS_REQ=(ocpp-csms==0.1.0)
ARTHEXIS_REQ=(arthexis==2.0.0 redis==5.2.1)
CONSTRAINTS=$ROOT/tests/interop/constraints.txt  # their dependencies, as verified
OCPP_RPC_LOCK=$ROOT/tests/interop/package-lock.json

REL=${OUT#"$ROOT"/}

stamp_ok() { [[ -f "$OUT/$1.ok" && "$(head -n1 "$OUT/$1.ok")" == "$2" && -e "$3" ]]; }

step() {  # step NAME KEY ARTIFACT COMMAND...: run COMMAND unless NAME's stamp holds KEY and ARTIFACT exists
    local name=$1 key=$2 artifact=$3; shift 3
    if stamp_ok "$name" "$key" "$artifact"; then
        echo "interop setup: $name: cached"
        return 0
    fi
    rm -f "$OUT/$name.ok" "$OUT/$name.failed"
    local log=$OUT/$name.log start=$SECONDS
    echo "interop setup: $name: installing (log: $REL/$name.log)"
    if "$@" >"$log" 2>&1; then
        echo "$key" >"$OUT/$name.ok"
        echo "interop setup: $name: done in $((SECONDS - start)) s"
    else
        { echo "installing $name failed (exit $?); last lines of $REL/$name.log:"; tail -n 15 "$log"; } \
            >"$OUT/$name.failed"
        echo "interop setup: $name: FAILED, see $REL/$name.failed"
        failures=$((failures + 1))
    fi
}

make_venv() {  # make_venv DIR REQUIREMENT...
    local dir=$1; shift
    rm -rf "$dir"
    "$PY" -m venv "$dir" || return 1
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@" || return 1
    "$dir/bin/python" -m pip freeze >"$dir/freeze.txt"
}

install_ocpp_csms() {
    make_venv "$OUT/venv-ocpp-csms" "${OCPP_CSMS_REQ[@]}" &&
        "$OUT/venv-ocpp-csms/bin/python" -c "import ocpp_csms; print('ocpp-csms', ocpp_csms.__version__)"
}

install_arthexis() {
    make_venv "$OUT/venv-arthexis" "${ARTHEXIS_REQ[@]}" &&
        "$OUT/venv-arthexis/bin/python" -c "import django, channels_redis, daphne, manage; print('arthexis ok, django', django.get_version())"
}

install_ocpp_rpc() {  # npm ci from the lock file into .interop/node (node_modules stays out of the tree)
    command -v node >/dev/null || { echo "node is not installed"; return 1; }
    command -v npm >/dev/null || { echo "npm is not installed"; return 1; }
    rm -rf "$OUT/node" && mkdir -p "$OUT/node" &&
        cp tests/interop/package.json tests/interop/package-lock.json "$OUT/node/" &&
        (cd "$OUT/node" && npm ci --no-audit --no-fund --loglevel=error) &&
        node -e "console.log('ocpp-rpc', require('$OUT/node/node_modules/ocpp-rpc/package.json').version)"
}

PINS="$(sha256sum "$CONSTRAINTS" | cut -c1-16) $("$PY" -V 2>&1)"
step ocpp-csms "${OCPP_CSMS_REQ[*]} $PINS" "$OUT/venv-ocpp-csms/bin/python" install_ocpp_csms
step arthexis "${ARTHEXIS_REQ[*]} $PINS" "$OUT/venv-arthexis/bin/daphne" install_arthexis
step ocpp-rpc "$(sha256sum "$OCPP_RPC_LOCK" | cut -d' ' -f1) node $(node --version 2>/dev/null)" \
    "$OUT/node/node_modules/ocpp-rpc/package.json" install_ocpp_rpc

if command -v redis-server >/dev/null; then
    echo "interop setup: redis-server: $(redis-server --version | cut -d' ' -f3)"
else
    echo "interop setup: redis-server is not installed (apt-get install redis-server): arthexis tests will skip (fail on CI)"
fi
if ((failures && STRICT)); then exit 1; fi
exit 0
