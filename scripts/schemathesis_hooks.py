"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

`no_internal_details`: an error response (4xx/5xx) must not leak internals — SQL, database
or Kafka client errors, Rust source paths, panics, file system paths, connection URLs. The
API's Problem `detail` may quote the client's own input back (serde names the value it could
not read), so a suspicious fragment that also appears in the request is not a leak.
"""

import json
import re

import schemathesis

LEAKS = re.compile(
    r"sqlx|rdkafka|librdkafka|tokio|hyper::|axum::|"
    r"\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM)\b .*\b(?:FROM|VALUES|SET|WHERE)\b|"
    r"syntax error at|violates [a-z ]*constraint|duplicate key value|invalid byte sequence|"
    r"out of range for type|relation \"|column \"|"
    r"panicked at|stack backtrace|RUST_BACKTRACE|\.rs:\d+|"
    r"/(?:home|root|usr|var|tmp|work|src)/|postgres(?:ql)?://|"
    r"database error|error returned from database|pool timed out",
    re.IGNORECASE,
)


def _request_text(case) -> str:
    parts = [
        json.dumps(getattr(case, name, None), default=str, ensure_ascii=False)
        for name in ("path_parameters", "query", "headers", "cookies")
    ]
    try:
        parts.append(json.dumps(case.body, default=str, ensure_ascii=False))
    except Exception:  # a NotSet body
        pass
    parts.append(str(case.formatted_path) if hasattr(case, "formatted_path") else "")
    return " ".join(parts)


@schemathesis.check
def no_internal_details(ctx, response, case):
    """Error responses never carry internal details."""
    if response.status_code < 400:
        return None
    body = response.text_lossy()
    request = _request_text(case).lower()
    for match in LEAKS.finditer(body):
        fragment = match.group(0)
        if fragment.lower() not in request:
            raise AssertionError(
                f"{response.status_code} response leaks internal details ({fragment!r}): {body[:300]}"
            )
    return None
