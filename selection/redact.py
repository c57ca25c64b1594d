"""Remove credentials from text before it leaves the process (stderr, logs, status, Events).

Error messages quote URIs and endpoints so a user can see what failed; a URI may carry
`user:password@`, and library errors may quote signed URLs or keys. Every message path passes
its text through `redact` first. Torch-free and dependency-free, so the operator imports it too.
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "***"

# scheme://userinfo@host: the userinfo part, whatever the scheme (http, https, s3, ...); also
# after a path normalization collapsed '//' to '/'.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*:/{1,2})(?P<userinfo>[^/@\s'\"]+)@")
# Known secret shapes: AWS access key ids, secret-bearing query parameters of presigned URLs,
# `key=value` / `key: value` pairs whose key names a secret, and HTTP Authorization values.
_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    re.compile(
        r"(?i)(?P<key>X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"
    ),
    re.compile(
        r"(?i)(?P<key>\b(?:aws_secret_access_key|aws_session_token|secret_?key|secret|password|passwd|token)"
        r"['\"]?\s*[=:]\s*['\"]?)[^\s'\",;&}]+"
    ),
    re.compile(r"(?i)(?P<key>\bAuthorization['\"]?\s*[=:]\s*['\"]?(?:Bearer|Basic|AWS4-HMAC-SHA256)?\s*)[^\s'\",]+"),
)


def _keep_key(match: re.Match[str]) -> str:
    key = match.groupdict().get("key")
    return f"{key}{REDACTED}" if key is not None else REDACTED


def redact(text: str) -> str:
    """`text` with URL userinfo and known secret patterns replaced by '***'."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_keep_key, text)
    return text


def userinfo_problem(url: str) -> str | None:
    """Why `url` is refused as an endpoint or URI because it embeds credentials, else None.

    Credentials belong in a Kubernetes Secret or the AWS environment variables: a URL is
    printed in errors, copied into ConfigMaps and shown in status.
    """
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if "@" not in (parsed.netloc or ""):
        return None
    return (
        f"{redact(url)} embeds credentials (user:password@); give them through a credentials "
        "Secret or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
    )
