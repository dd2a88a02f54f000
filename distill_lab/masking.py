"""Secrets never leave the environment: URLs are shown, stored and raised with their password masked."""

from __future__ import annotations

import re
import urllib.parse

from distill_lab.errors import DistillLabError

_USERINFO = re.compile(r"(?<=://)([^:/@\s]*):([^@/\s]+)@")


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (database URLs through SQLAlchemy, others by pattern)."""
    if not isinstance(url, str) or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url  # lazy: the CLI imports this module for --help (SQLAlchemy ~0.2 s)

        parsed = make_url(url)
        if parsed.password is not None:
            return parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a database URL: the generic pattern below
        pass
    return _USERINFO.sub(r"\1:***@", url)


def scrub(text: str, *urls: str | None) -> str:
    """`text` (an error message, a log line) with every password of `urls` replaced by `***`."""
    for url in urls:
        password = _password(url)
        if password:
            text = text.replace(password, "***").replace(urllib.parse.quote(password, safe=""), "***")
    return text


def _password(url: str | None) -> str | None:
    if not url or "@" not in url:
        return None
    match = _USERINFO.search(url)
    return urllib.parse.unquote(match.group(2)) if match else None


def check_tracking_credentials(uri: str) -> None:
    """An http(s) tracking URI must not carry credentials: MLflow reads them from the environment."""

    if re.match(r"https?://[^/@\s]*@", uri or ""):
        raise DistillLabError(
            f"tracking URI {mask_url(uri)}: credentials in the URL would be stored and printed; set "
            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead and drop them from the URI")
