"""Redis's password from a file of the Secret, not from the environment.

dranspose reads its Redis from ``REDIS_URL`` (pydantic settings), password included.
In the chart's pods that variable used to carry the password (Kubernetes expanded it
from a ``secretKeyRef``), so ``kubectl exec ... env`` and anything else that reads the
container's environment showed it. The chart now gives ``REDIS_URL`` without it and the
path of a file of the Secret in :data:`PASSWORD_FILE_VARIABLE`; a service puts the two
together in its own process (:func:`apply_password_file`) before dranspose reads its
settings. The process's environment holds the result, but the container's does not.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import MutableMapping
from pathlib import Path

from streamtomo.hsds_bridge.credentials import CredentialsError, password_in_file

PASSWORD_FILE_VARIABLE = "STREAMTOMO_REDIS_PASSWORD_FILE"
URL_VARIABLE = "REDIS_URL"


class RedisPasswordError(ValueError):
    """The password file cannot be read, or the URL cannot take it."""


def url_with_password(url: str, password: str) -> str:
    """``url`` (``redis://host:port/db``) with ``password``, quoted for the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise RedisPasswordError(f"{URL_VARIABLE} {url!r} is no redis:// or rediss:// URL with a host")
    if parts.password is not None:
        raise RedisPasswordError(
            f"{URL_VARIABLE} holds a password already and {PASSWORD_FILE_VARIABLE} gives one: keep one of them"
        )
    user = urllib.parse.quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]  # host and port as written (IPv6 brackets kept)
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def read_password(path: str | Path) -> str:
    """The password in ``path``, read as every password file of the project is
    (:func:`~streamtomo.hsds_bridge.credentials.password_in_file`: one line, its line
    end dropped, a warning when others may read the file)."""
    try:
        return password_in_file(path, PASSWORD_FILE_VARIABLE)
    except CredentialsError as error:
        raise RedisPasswordError(f"{PASSWORD_FILE_VARIABLE} {path}: {error}") from None


def apply_password_file(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Put the password of :data:`PASSWORD_FILE_VARIABLE`'s file into ``REDIS_URL``;
    False (nothing changed) where that variable is not set."""
    path = environ.get(PASSWORD_FILE_VARIABLE)
    if not path:
        return False
    url = environ.get(URL_VARIABLE)
    if not url:
        raise RedisPasswordError(f"{PASSWORD_FILE_VARIABLE} is set but {URL_VARIABLE} is not")
    environ[URL_VARIABLE] = url_with_password(url, read_password(path))
    return True
