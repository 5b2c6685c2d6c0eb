"""URL normalisation (for exact URL dedup), domains (the paper's "base URL") and URL path prefixes."""

from __future__ import annotations

import urllib.parse

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_TRACKING_PREFIXES = ("utm_",)
_TRACKING_KEYS = {"fbclid", "gclid", "sessionid", "phpsessid", "sid"}


def normalize_url(url: str) -> str:
    """A canonical form of `url`, so one page fetched under spellings that differ only cosmetically
    is deduplicated: scheme and host lower-cased, default port, fragment and tracking parameters
    (utm_*, fbclid, session ids) dropped, remaining query parameters sorted, empty path -> "/".

    >>> normalize_url("HTTP://www.Example.com:80/a/b?utm_source=x&b=2&a=1#top")
    'http://www.example.com/a/b?a=1&b=2'
    """
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port if _safe_port(parts) else None
    netloc = host if port is None or str(port) == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = parts.path or "/"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = sorted((k, v) for k, v in query
                   if not k.lower().startswith(_TRACKING_PREFIXES) and k.lower() not in _TRACKING_KEYS)
    return urllib.parse.urlunsplit((scheme, netloc, path, urllib.parse.urlencode(query), ""))


def _safe_port(parts: urllib.parse.SplitResult) -> bool:
    try:
        return parts.port is not None
    except ValueError:  # a malformed port: keep the URL as is, without it
        return False


def url_domain(url: str) -> str:
    """The host without a leading `www.`: pages sharing it form one domain (the paper's base URL).

    >>> url_domain("https://www.mathoverflow.net/questions/1")
    'mathoverflow.net'
    """
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


def url_path_prefix(url: str, depth: int = 1) -> str:
    """The first `depth` directory segments of the URL path, with slashes: the unit people annotate
    as math or not (e.g. mathoverflow.net `/questions/`). A page directly under the root gets "/".

    >>> url_path_prefix("https://mathoverflow.net/questions/123/title", 1)
    '/questions/'
    >>> url_path_prefix("https://example.com/index.html", 1)
    '/'
    """
    segments = [s for s in urllib.parse.urlsplit(url).path.split("/")]
    # The last segment is a file name unless the path ends with "/".
    directories = [s for s in segments[1:-1] if s]
    chosen = directories[:depth]
    return "/" + "".join(s + "/" for s in chosen)


def path_matches(path: str, annotated_path: str) -> bool:
    """Whether a page's path prefix lies under an annotated path (both in `url_path_prefix` form)."""
    if not annotated_path.endswith("/"):
        annotated_path += "/"
    if not annotated_path.startswith("/"):
        annotated_path = "/" + annotated_path
    return path.startswith(annotated_path)
