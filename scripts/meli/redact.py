"""Secrets out of everything that shows the config: the report, MLflow, logs and error messages.

A config may hold a presigned URL (``?X-Amz-Signature=...``), a URL with ``user:password@``, or
a token in a query string; a shared report or MLflow server must not show them. What is hidden:

- a URL's password (``https://user:***@host/...``; the user name stays, it helps debugging);
- query parameters whose name looks like a credential (signature, token, key, secret, password,
  credential, auth, sig, X-Amz-*/X-Goog-* security fields): the value becomes ``***``;
- the value of any config key whose name looks like a credential (``password``, ``api_key``,
  ``token``, ``secret``, ``access_key``, ...), whatever the value.

Redaction is for showing; the workflow itself still uses the real values.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|signature|"
    r"^sig$|^key$|session)",
    re.IGNORECASE,
)
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` with its password and credential-like query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_NAME.search(k) or k.lower().startswith(("x-amz-", "x-goog-")) for k, _ in pairs):
            query = urlencode([(k, MASK if (SECRET_NAME.search(k) or k.lower().startswith(("x-amz-cred",
                               "x-amz-sig", "x-amz-security", "x-goog-cred", "x-goog-sig"))) else v)
                               for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside a free text (a log line, an error message) redacted."""
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


_SECRET_LINE = re.compile(r"^(\s*-?\s*[\"']?([\w.-]+)[\"']?\s*:\s*)(\S.*?)\s*$")


def redact_config_text(text: str) -> str:
    """A config file's text (YAML) as shown: URLs redacted, values of credential-like keys masked."""
    out = []
    for line in redact_text(text).splitlines():
        match = _SECRET_LINE.match(line)
        if match and SECRET_NAME.search(match.group(2)) and not re.fullmatch(r"[-+0-9.eE]+|true|false|null|~",
                                                                             match.group(3).split("#")[0].strip()):
            line = f"{match.group(1)}{MASK}"
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def redact_config(value: Any, key: str = "") -> Any:
    """A copy of a config (any nesting of mappings and lists) safe to show."""
    if isinstance(value, dict):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v, key) for v in value]
    if key and SECRET_NAME.search(key) and value not in (None, "", False) and not isinstance(value, (bool, int, float)):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value
