"""Passwords in storage URLs and tracking URIs never leave the process.

A URL like `postgresql://user:secret@host/db` is shown as `postgresql://user:***@host/db`
wherever studylib prints, logs or records it. Two nets catch what our own code does not format:
every URL-shaped `scheme://user:password@` in a text is masked, and the passwords of the URLs
registered at the command line (`remember`) are masked wherever else they appear, so a library
error that quotes a URL (MLflow's "API request to http://user:secret@... failed") or a bare
password is scrubbed too. `install_log_filter` applies both to every log record of the process.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# scheme://user:password@ ; the password may hold anything but '@' and whitespace, as in
# SQLAlchemy's URL grammar (a '/' or ':' inside a password is legal there).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]+)@")
_known: set[str] = set()


def remember(*urls: str) -> None:
    """Register the passwords of these URLs, so `redact` masks them wherever they appear."""
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:  # not a URL (a journal file path, say)
            password = None
        if password:
            _known.update({password, unquote(password)})


def redact(text: str) -> str:
    """`text` with every URL password, and every remembered password, replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    for secret in sorted(_known, key=len, reverse=True):
        if len(secret) >= 3:  # a one- or two-character password would mask half the text
            text = text.replace(secret, MASK)
    return text


def install_log_filter() -> None:
    """Redact every log record of this process (ours, Optuna's, MLflow's, SQLAlchemy's)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "studylib_redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: leave it to logging's own error handling
            return record
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.studylib_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
