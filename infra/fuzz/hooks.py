"""Schemathesis hooks of `infra/fuzz.sh` (loaded through SCHEMATHESIS_HOOKS).

One check of our own, beside schemathesis' built-in ones: every error answer of every service
is RFC 9457 problem details, as eda-http's `ApiError` renders them: `Content-Type:
application/problem+json` and a JSON object with `type`, `title`, `status` (the response's own
status) and `detail`. An extractor rejection that slipped past `ApiError` (axum's plain-text
400/405/415/422) fails it.
"""

import json

import schemathesis

REQUIRED = ("type", "title", "status", "detail")


@schemathesis.check
def problem_details_on_errors(ctx, response, case):
    """4xx and 5xx answers are application/problem+json with type, title, status, detail."""
    status = response.status_code
    if status < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/problem+json":
        raise AssertionError(
            f"{status} answered with Content-Type {content_type!r}, "
            "not application/problem+json"
        )
    try:
        body = json.loads(response.content)
    except ValueError as err:
        raise AssertionError(f"{status}: the problem body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise AssertionError(f"{status}: the problem body is not a JSON object")
    missing = [key for key in REQUIRED if key not in body]
    if missing:
        raise AssertionError(f"{status}: the problem body lacks {', '.join(missing)}")
    if body["status"] != status:
        raise AssertionError(f"{status}: the problem body says status {body['status']!r}")
    return None


# projection-service's `GET /orders/{id}?min_revision=N` waits for the view to reach revision N,
# up to `wait_ms` (default: the service's cap, 10 s). Made-up revisions are never reached, so
# each such case would wait its whole budget: one of them costs what hundreds of others do. The
# wait is capped here; that the wait ends in a 409 is what gets tested.
FUZZ_WAIT_MS = 50


@schemathesis.hook
def before_call(context, case, kwargs):
    """Cap the read-your-writes wait of fuzzed requests at FUZZ_WAIT_MS."""
    query = case.query
    if not isinstance(query, dict) or "min_revision" not in query:
        return
    wait = query.get("wait_ms")
    if wait is None or (isinstance(wait, int) and not isinstance(wait, bool) and wait > FUZZ_WAIT_MS):
        query["wait_ms"] = FUZZ_WAIT_MS


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a readiness probe reporting a dependency down.

    `GET /readyz` answering 503 problem details while Kafka or PostgreSQL is unreachable is what
    the probe is for (documented, and `infra/fuzz.sh` waits for readiness before each run); any
    other 5xx, and any other failure of /readyz, stays a failure.
    """
    if (
        getattr(failure, "code", None) == "ST101"
        and case.operation.path == "/readyz"
        and response.status_code == 503
    ):
        return False
    return True
