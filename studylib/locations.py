"""Where a study's records live: `--storage` and `--tracking-uri`, parsed once, schemes checked.

Every command (and every launcher that starts workers on other machines) reads these two
texts through `parse_storage` and `parse_tracking_uri`, so a typo (`foo://bar`, `""`,
`postgresql://host:port5432/db`) is one line naming the flag, the value and what is allowed,
before anything is opened. A `Location` says what kind of store it is, where (a file, or a
server's host and port), how to show it without its password, and whether another machine
could reach it: a launcher that spreads workers over machines refuses a store that only this
one can see.

Parsing reads nothing but the text (and, for a file, which file system it lies on): whether
a folder can be written or a server answers is checked by the commands that open them.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from studylib.errors import ConfigError
from studylib.redact import redact

FILE_KINDS = ("journal", "sqlite")
SERVER_KINDS = ("postgresql", "mysql", "mssql", "http", "https")
# Database schemes SQLAlchemy knows, each with or without a driver (`postgresql+psycopg`).
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
STORAGE_KINDS = ("journal", "sqlite", "postgresql", "mysql")
TRACKING_KINDS = ("sqlite", "postgresql", "mysql", "mssql", "http", "https")
STORAGE_ALLOWED = (
    "a journal file path (optuna.journal), sqlite:///PATH, "
    "postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB"
)
TRACKING_ALLOWED = (
    "sqlite:///PATH, postgresql://USER@HOST:PORT/DB, mysql://..., mssql://... "
    "or http(s)://HOST:PORT (an MLflow server)"
)
# File systems that other machines mount too (a file on one of them is shared).
SHARED_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.sshfs",
        "afs",
        "panfs",
        "wekafs",
    }
)
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass(frozen=True)
class Location:
    """A parsed storage or tracking location.

    `text` is what was given, password included (what a client must connect with): it never
    appears in `repr`; show `redacted` instead.
    """

    kind: str  # journal | sqlite | postgresql | mysql | mssql | http | https
    text: str = field(repr=False)
    redacted: str
    path: Path | None = None  # journal and sqlite: the file
    host: str | None = None  # servers: None for a local socket (postgresql:///db)
    port: int | None = None
    database: str | None = None  # databases: the database name; http(s): the URL path
    shared_folder: bool = False  # a file on a file system other machines mount (NFS, ...)

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def is_server(self) -> bool:
        return self.kind in SERVER_KINDS

    @property
    def reachable_from_other_machines(self) -> bool:
        """Could a process on another machine open this? A file only on a shared file system;
        a server unless it listens on loopback (127.0.0.0/8, ::1, localhost) or a local socket."""
        if self.is_file:
            return self.shared_folder
        return self.host is not None and not is_loopback(self.host)

    def __str__(self) -> str:
        return self.redacted


def parse_storage(text: str, flag: str = "--storage") -> Location:
    """`--storage`: a journal file path, or an SQLAlchemy database URL Optuna's RDB takes."""
    location = _parse(text, flag, STORAGE_ALLOWED, journal_paths=True)
    if location.kind not in STORAGE_KINDS:
        raise ConfigError(
            f"{flag} = {location.redacted!r}: {location.kind} is not an Optuna storage; "
            f"allowed: {STORAGE_ALLOWED}"
        )
    return location


def parse_tracking_uri(text: str, flag: str = "--tracking-uri") -> Location:
    """`--tracking-uri`: a database MLflow stores runs in, or an MLflow tracking server."""
    location = _parse(text, flag, TRACKING_ALLOWED, journal_paths=False)
    if location.kind not in TRACKING_KINDS:
        raise ConfigError(
            f"{flag} = {location.redacted!r}: {location.kind} is not an MLflow tracking store; "
            f"allowed: {TRACKING_ALLOWED}"
        )
    return location


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def on_shared_file_system(path: Path) -> bool:
    """Whether `path` (or the folder it would be created in) lies on NFS, Lustre, CIFS, ..."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:  # not Linux: cannot tell, so not known to be shared
        return False
    return file_system_type(path, mounts) in SHARED_FILE_SYSTEMS


def file_system_type(path: Path, mounts: str) -> str:
    """The type of the file system `path` lies on, from a mount table (/proc/self/mounts)."""
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")  # the table escapes spaces
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, parts[2]
    return best_type


def _parse(text: str, flag: str, allowed: str, *, journal_paths: bool) -> Location:
    shown = redact(text)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{flag} = {shown!r}: empty; allowed: {allowed}")
    if text != text.strip() or any(not ch.isprintable() for ch in text):
        raise ConfigError(
            f"{flag} = {shown!r}: holds spaces at its ends or control characters; "
            f"allowed: {allowed}"
        )
    if "://" not in text:
        if not journal_paths:
            raise ConfigError(f"{flag} = {shown!r}: not a URI (no scheme://); allowed: {allowed}")
        return _file("journal", text, text, shown, flag, allowed)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigError(
            f"{flag} = {shown!r}: not a valid URI ({exc}); allowed: {allowed}"
        ) from None
    scheme = parts.scheme.lower()
    kind = scheme.split("+", 1)[0]
    if kind == "sqlite":
        return _sqlite(text, shown, flag, allowed)
    if kind in DATABASE_SCHEMES or kind in ("http", "https"):
        return _server(kind, parts, text, shown, flag, allowed)
    if not scheme:
        raise ConfigError(f"{flag} = {shown!r}: no scheme before ://; allowed: {allowed}")
    raise ConfigError(f"{flag} = {shown!r}: unknown scheme {scheme!r}; allowed: {allowed}")


def _file(kind: str, path_text: str, text: str, shown: str, flag: str, allowed: str) -> Location:
    if "\x00" in path_text:
        raise ConfigError(f"{flag} = {shown!r}: a path cannot hold a NUL byte; allowed: {allowed}")
    path = Path(path_text)
    if path_text.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise ConfigError(f"{flag} = {shown!r}: names a folder, not a file; allowed: {allowed}")
    return Location(
        kind=kind,
        text=text,
        redacted=shown,
        path=path,
        shared_folder=on_shared_file_system(path.parent),
    )


def _sqlite(text: str, shown: str, flag: str, allowed: str) -> Location:
    # SQLAlchemy's form: sqlite:///relative/path or sqlite:////absolute/path; sqlite:// alone
    # is an in-memory database, which keeps nothing once the process ends.
    rest = text.partition("://")[2]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ConfigError(
            f"{flag} = {shown!r}: an in-memory or pathless SQLite database keeps nothing; "
            f"allowed: {allowed}"
        )
    path_text = unquote(rest[1:].split("?", 1)[0])
    return _file("sqlite", path_text, text, shown, flag, allowed)


def _server(
    kind: str, parts: SplitResult, text: str, shown: str, flag: str, allowed: str
) -> Location:
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{flag} = {shown!r}: the port is not a number from 0 to 65535; allowed: {allowed}"
        ) from None
    host = parts.hostname or None
    if kind in ("http", "https") and host is None:
        raise ConfigError(f"{flag} = {shown!r}: no host; allowed: {allowed}")
    if host is None and kind != "postgresql":  # libpq alone reads a local socket without a host
        raise ConfigError(f"{flag} = {shown!r}: no host; allowed: {allowed}")
    database = parts.path.lstrip("/") or None
    if kind in DATABASE_SCHEMES and database is None:
        raise ConfigError(
            f"{flag} = {shown!r}: no database name after the host; allowed: {allowed}"
        )
    return Location(
        kind=kind,
        text=text,
        redacted=shown,
        host=host,
        port=port,
        database=database if kind in DATABASE_SCHEMES else (parts.path or None),
    )
