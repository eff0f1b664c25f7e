#!/usr/bin/env bash
# Checks docs/openapi.yaml, and a live worker's HTTP API against it.
#
#   openapi_check.sh                       validate docs/openapi.yaml only
#   openapi_check.sh BASE_URL [TOKEN]      ... then run schemathesis against BASE_URL
#                                          (e.g. http://127.0.0.1:18080), with TOKEN as
#                                          `Authorization: Bearer TOKEN` when given
#
# Needs `openapi-spec-validator` and `schemathesis` 4.x on PATH (PyPI). Schemathesis tests the
# GET operations except /v1/events/stream (an endless stream), with a bounded number of
# examples and a fixed seed, and fails on 5xx answers, answers that do not match the
# documented status codes, content types, schemas or headers, and (with a token) operations
# that answer without it. Before that, a short probe checks, with a token, the 401 answer
# (`www-authenticate: Bearer`, code `unauthorized`) and `?access_token=`; without one, that
# the worker does not want one. Schemathesis sees more when the worker already holds a few
# runs: it follows the first run of GET /v1/runs into GET /v1/runs/{run_id} and its events.
#
# Environment (all optional):
#   OPENAPI_SPEC              the document (default: docs/openapi.yaml of this checkout)
#   OPENAPI_MAX_EXAMPLES      test cases per operation and phase (default 50)
#   OPENAPI_SEED              hypothesis seed (default 20261123)
#   OPENAPI_EXCLUDE_METRICS   1 to leave /metrics out
#   OPENAPI_EXTRA_CHECKS      more schemathesis checks, comma separated (e.g. unsupported_method:
#                             other methods must get 405 with an `Allow` header)
#   OPENAPI_REPORT_DIR        write a JUnit report there
#   OPENAPI_WAIT_S            how long to wait for BASE_URL/healthz to answer (default 30)
# Exit status: 0 when everything passed, 1 when a check failed, 2 on a usage or setup error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
spec=${OPENAPI_SPEC:-$root/docs/openapi.yaml}
base_url=${1:-}
token=${2:-}

say() { printf '[openapi_check] %s\n' "$*" >&2; }

[ $# -le 2 ] || { say "usage: $0 [BASE_URL [TOKEN]]"; exit 2; }
[ -f "$spec" ] || { say "no document at $spec"; exit 2; }
spec=$(cd "$(dirname "$spec")" && pwd)/$(basename "$spec")

# (a) The document itself.
command -v openapi-spec-validator >/dev/null 2>&1 \
    || { say "openapi-spec-validator is not installed (python3 -m pip install openapi-spec-validator)"; exit 2; }
say "validating $spec"
openapi-spec-validator "$spec" >&2 || { say "the document is not valid OpenAPI"; exit 1; }

[ -n "$base_url" ] || exit 0
base_url=${base_url%/}

# (b) A live worker against the document.
command -v schemathesis >/dev/null 2>&1 \
    || { say "schemathesis is not installed (python3 -m pip install 'schemathesis>=4,<5')"; exit 2; }
version=$(schemathesis --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true)
case "$version" in
    4.*) ;;
    *) say "schemathesis ${version:-of unknown version} found; this script needs 4.x (python3 -m pip install 'schemathesis>=4,<5')"; exit 2 ;;
esac

wait_s=${OPENAPI_WAIT_S:-30}
say "waiting up to ${wait_s}s for $base_url/healthz"
# Waits for /healthz, then checks what schemathesis does not: with a token, that a missing or
# wrong one gets 401 + `www-authenticate: Bearer` + `unauthorized`, and that `?access_token=`
# opens the event stream (and nothing else); without one, that the worker does not want one (else every answer would be a 401
# and the run would prove nothing).
python3 - "$base_url" "$wait_s" "$token" <<'PY' || exit $?
import json, sys, time, urllib.error, urllib.parse, urllib.request
base, wait_s, token = sys.argv[1], float(sys.argv[2]), sys.argv[3]

def get(path, headers=None):
    req = urllib.request.Request(base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()

def fail(msg, code=1):
    print(f"[openapi_check] {msg}", file=sys.stderr)
    sys.exit(code)

deadline = time.monotonic() + wait_s
while True:
    try:
        if get("/healthz")[0] == 200:
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        fail(f"{base}/healthz does not answer 200", 2)
    time.sleep(0.5)

def expect_401(path, headers, what):
    status, hdrs, body = get(path, headers)
    if status != 401:
        fail(f"GET {path} {what}: expected 401, got {status}")
    www = {k.lower(): v for k, v in hdrs.items()}.get("www-authenticate", "")
    if not www.startswith("Bearer"):
        fail(f"GET {path} {what}: 401 without `www-authenticate: Bearer` (got {www!r})")
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:
        code = None
    if code != "unauthorized":
        fail(f"GET {path} {what}: 401 body is not an `unauthorized` error: {body[:200]!r}")

if token:
    expect_401("/v1/counts", {}, "without a token")
    expect_401("/v1/counts", {"Authorization": "Bearer not-" + token}, "with a wrong token")
    # The query token is the event stream's alone (EventSource cannot send headers).
    expect_401("/v1/counts?access_token=" + urllib.parse.quote(token), {}, "with the token in the query")
    expect_401("/v1/events/stream?access_token=" + urllib.parse.quote("not-" + token), {}, "with a wrong access_token")
    req = urllib.request.Request(base + "/v1/events/stream?access_token=" + urllib.parse.quote(token))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200 or not r.headers.get("content-type", "").startswith("text/event-stream"):
                fail(f"GET /v1/events/stream?access_token=<token>: expected a 200 event stream, got {r.status}")
    except urllib.error.HTTPError as e:
        fail(f"GET /v1/events/stream?access_token=<token>: expected 200, got {e.code}")
    status = get("/v1/counts", {"Authorization": "Bearer " + token})[0]
    if status != 200:
        fail(f"GET /v1/counts with the bearer token: expected 200, got {status}")
elif get("/v1/counts")[0] == 401:
    fail("the worker wants a token (GET /v1/counts answers 401): pass it as the second argument", 2)
PY

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
st_args=(
    run "$spec"
    --url "$base_url"
    --include-method GET
    --exclude-path /v1/events/stream
    --phases examples,coverage,fuzzing,stateful
    --max-examples "${OPENAPI_MAX_EXAMPLES:-50}"
    --seed "${OPENAPI_SEED:-20261123}"
    --generation-database none
    --generation-with-security-parameters false
    --request-timeout 10
    --workers 1
    --no-color
)
[ "${OPENAPI_EXCLUDE_METRICS:-0}" = 1 ] && st_args+=(--exclude-path /metrics)
if [ -n "$token" ]; then
    # ignored_auth: every secured operation must refuse a request that carries no token.
    checks+=,ignored_auth
    st_args+=(--header "Authorization: Bearer $token")
fi
[ -n "${OPENAPI_EXTRA_CHECKS:-}" ] && checks+=",$OPENAPI_EXTRA_CHECKS"
st_args+=(--checks "$checks")
if [ -n "${OPENAPI_REPORT_DIR:-}" ]; then
    mkdir -p "$OPENAPI_REPORT_DIR"
    st_args+=(--report junit --report-dir "$(cd "$OPENAPI_REPORT_DIR" && pwd)")
fi

# Run from a scratch directory so that nothing schemathesis or hypothesis writes lands in the checkout.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
say "schemathesis $version against $base_url (checks: $checks)"
status=0
(cd "$scratch" && schemathesis "${st_args[@]}") || status=$?
if [ "$status" -ne 0 ]; then
    say "schemathesis found problems (exit $status)"
    exit 1
fi
say "the worker's HTTP API matches $spec"
