"""Datastore addresses: parse the forms users paste, mask passwords, and render what Kine expects.

Kine's own DSN forms differ per driver: ``postgres://u:p@h:port/db``, ``mysql://u:p@tcp(h:port)/db``
(Go's MySQL syntax) and ``sqlite://PATH?params``. Users also paste ordinary URLs
(``mysql://u:p@h:port/db``, ``postgresql://...``). `Dsn` accepts all of them.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import UsageError

MASK = "****"
SQLITE_PARAMS = "_journal_mode=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
# Kine's MySQL DSN, as the Go driver writes it: user:password@tcp(host:port)/db?params
_GO_MYSQL = re.compile(r"^(?P<user>[^:@/]*)(?::(?P<password>[^@]*))?@tcp\((?P<host>[^:)]+)(?::(?P<port>\d+))?\)/"
                       r"(?P<db>[^?]*)(?:\?(?P<query>.*))?$")


def generate_password(length: int = 24) -> str:
    """A password safe in URLs and shell words (letters and digits only)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class Dsn:
    kind: str  # "postgres" | "mysql" | "sqlite"
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = ""
    database: str = ""
    path: str = ""  # sqlite only
    params: dict = field(default_factory=dict)
    # Postgres multi-host DSNs (h1:p1,h2:p2): the (host, port) pairs tried after the first, in order; with
    # target_session_attrs=read-write, libpq and Kine's pgx connect to whichever of them is the primary.
    fallbacks: tuple = ()

    @classmethod
    def parse(cls, text: str) -> "Dsn":
        text = text.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise UsageError(f"not a DSN: {mask_text(text)!r}; use postgres://user:pass@host:port/db, "
                             "mysql://user:pass@tcp(host:port)/db or sqlite:///path/to/state.db")
        scheme = scheme.lower()
        if scheme == "sqlite":
            path, _, query = rest.partition("?")
            if not path:
                raise UsageError("sqlite DSN has no path; use sqlite:///path/to/state.db")
            return cls("sqlite", path=path, params=dict(parse_qsl(query)))
        if scheme in ("postgres", "postgresql"):
            return cls._from_url("postgres", text, 5432)
        if scheme in ("mysql", "mariadb"):
            match = _GO_MYSQL.match(rest)
            if match:
                return cls("mysql", host=match["host"], port=int(match["port"] or 3306), user=match["user"],
                           password=match["password"] or "", database=match["db"] or "kubernetes",
                           params=dict(parse_qsl(match["query"] or "")))
            return cls._from_url("mysql", "mysql://" + rest, 3306)
        raise UsageError(f"unsupported datastore scheme {scheme!r}; kinelab reads postgres://, mysql:// and sqlite://")

    @classmethod
    def _from_url(cls, kind: str, text: str, default_port: int) -> "Dsn":
        url = urlsplit(text)
        auth, _, hosts = url.netloc.rpartition("@")
        first, *others = hosts.split(",")
        if others and kind != "postgres":
            raise UsageError(f"several hosts in DSN {mask_text(text)!r}: only Postgres DSNs may list fallbacks")
        try:
            url = url._replace(netloc=f"{auth}@{first}" if auth else first)
            port = url.port or default_port
            fallbacks = tuple(_host_port(other, default_port) for other in others)
        except ValueError as exc:
            raise UsageError(f"bad port in DSN {mask_text(text)!r}: {exc}") from exc
        return cls(kind, host=url.hostname or "127.0.0.1", port=port, user=unquote(url.username or ""),
                   password=unquote(url.password or ""), database=url.path.lstrip("/") or "kubernetes",
                   params=dict(parse_qsl(url.query)), fallbacks=fallbacks)

    @classmethod
    def sqlite(cls, path: Path) -> "Dsn":
        return cls("sqlite", path=str(Path(path).resolve()), params=dict(parse_qsl(SQLITE_PARAMS)))

    def _url(self, password: str) -> str:
        if self.kind == "sqlite":
            query = f"?{urlencode(self.params)}" if self.params else ""
            return f"sqlite://{self.path}{query}"
        auth = quote(self.user, safe="")
        if password:
            auth += ":" + password
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"{self.kind}://{auth}@{self.hosts}/{self.database}{query}"

    @property
    def hosts(self) -> str:
        """host:port, followed by the fallbacks' (h1:p1,h2:p2)."""
        return ",".join(f"{host}:{port}" for host, port in ((self.host, self.port), *self.fallbacks))

    @property
    def url(self) -> str:
        """The full DSN, password included. Only `kinelab dsn` prints this."""
        return self._url(quote(self.password, safe=""))

    @property
    def masked(self) -> str:
        return self._url(MASK if self.password else "")

    @property
    def kine_endpoint(self) -> str:
        """The --endpoint value Kine wants (secret: pass it through the environment, not argv)."""
        if self.kind == "mysql":
            auth = self.user + (":" + self.password if self.password else "")
            query = f"?{urlencode(self.params)}" if self.params else ""
            return f"mysql://{auth}@tcp({self.host}:{self.port})/{self.database}{query}"
        if self.kind == "postgres":
            return replace(self, params={"sslmode": "disable", **self.params}).url
        return self.url

    @property
    def identity(self) -> str:
        """What makes two DSNs the same source, without credentials."""
        if self.kind == "sqlite":
            return f"sqlite:{Path(self.path).resolve()}"
        return f"{self.kind}://{self.hosts}/{self.database}"

    def __repr__(self) -> str:  # never leak the password through a repr
        return f"Dsn({self.masked!r})"


def _host_port(text: str, default_port: int) -> tuple:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if port and not port.isdigit():
        raise ValueError(f"Port could not be cast to integer value as {port!r}")
    return host or "127.0.0.1", int(port or default_port)


_SECRET_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)", re.I)
_SECRET_IN_KV = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>[^\s&]+)", re.I)
# user:secret@ without a well-formed scheme: a mistyped DSN ("postgres//u:p@h") or Go's MySQL form
_SECRET_BEFORE_AT = re.compile(r"(?P<head>[^\s:/@'\"]+:)(?P<secret>[^\s@/'\"]+)(?=@)")


def mask_text(text: str) -> str:
    """Mask every password that looks like part of a DSN inside free text (logs, errors)."""
    for pattern in (_SECRET_IN_URL, _SECRET_IN_KV, _SECRET_BEFORE_AT):
        text = pattern.sub(lambda m: m["head"] + MASK, text)
    return text
