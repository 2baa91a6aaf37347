"""HSDS account credentials: from the environment or a file, never the command line.

Sources, first match wins:

1. ``STREAMTOMO_HSDS_USERNAME`` + ``STREAMTOMO_HSDS_PASSWORD``, or
   ``STREAMTOMO_HSDS_PASSWORD_FILE=/path/to/file`` holding the password alone (a key of
   a mounted Kubernetes Secret: the chart's way, so that no password sits in a
   process's environment, which its children inherit and ``/proc`` shows)
2. ``STREAMTOMO_HSDS_CREDENTIALS=/path/to/file`` holding one ``user:password`` line
   (a mounted Kubernetes Secret, or a file written by ``streamtomo hsds``)
3. ``HS_USERNAME`` + ``HS_PASSWORD`` (the variables h5pyd and hsload already use)

The password never appears in ``repr``/``str``, exceptions or log lines: a
:class:`Credentials` object can be logged or put in a traceback safely.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ENV_USERNAME = "STREAMTOMO_HSDS_USERNAME"
ENV_PASSWORD = "STREAMTOMO_HSDS_PASSWORD"
ENV_PASSWORD_FILE = "STREAMTOMO_HSDS_PASSWORD_FILE"
ENV_FILE = "STREAMTOMO_HSDS_CREDENTIALS"
HS_USERNAME = "HS_USERNAME"
HS_PASSWORD = "HS_PASSWORD"


class CredentialsError(RuntimeError):
    """No usable credentials; the message names sources, never secrets."""


@dataclass(frozen=True)
class Credentials:
    """A username and its password; the password is hidden from every repr."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.username or ":" in self.username:
            raise CredentialsError("username must be non-empty and contain no ':'")
        if not self.password:
            raise CredentialsError(f"empty password for user {self.username!r}")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"

    __str__ = __repr__

    def authorization_header(self) -> str:
        """Value of the HTTP ``Authorization`` header (basic auth)."""
        token = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(token).decode("ascii")

    def as_line(self) -> str:
        """``user:password``: the format of credential and HSDS password files."""
        return f"{self.username}:{self.password}"


def parse_credentials_line(text: str, source: str = "credentials") -> Credentials:
    """Parse the first non-comment ``user:password`` line of ``text``."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep:
            # Do not echo the line: it may be a bare password.
            raise CredentialsError(f"{source}: expected a 'user:password' line")
        return Credentials(user.strip(), password.strip())
    raise CredentialsError(f"{source}: no 'user:password' line found")


def open_to_others(st: os.stat_result) -> bool:
    """Whether users other than this process's may read or write a secret file: any
    access for others, or for a group this process is not in. Kubernetes mounts a
    Secret group-readable for the pod's fsGroup, which the process is in (0440): no
    warning one cannot act on (the mount is read-only)."""
    if st.st_mode & stat.S_IRWXO:
        return True
    if not st.st_mode & stat.S_IRWXG:
        return False
    return st.st_gid not in {os.getgid(), *os.getgroups()}


def read_secret_file(path: str | os.PathLike[str], what: str = "credentials") -> str:
    """The text of a file holding a secret; warn if others can read it."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"cannot read {what} file {p}: {exc.strerror}") from None
    if open_to_others(st):
        log.warning("%s file %s is accessible by other users; chmod 600 it", what, p)
    return text


def load_credentials_file(path: str | os.PathLike[str]) -> Credentials:
    """Read ``user:password`` from ``path``; warn if others can read the file."""
    return parse_credentials_line(read_secret_file(path), source=str(path))


def password_from(env: Mapping[str, str], variable: str, file_variable: str) -> str:
    """The password in ``variable``, or in the file ``file_variable`` names (its one
    line, without the line end); '' when neither is set. Both set is an error: which
    one wins would be a guess."""
    value, path = env.get(variable, ""), env.get(file_variable, "")
    if value and path:
        raise CredentialsError(f"set {variable} or {file_variable}, not both")
    if not path:
        return value
    return password_in_file(path, file_variable)


def password_in_file(path: str | os.PathLike[str], file_variable: str) -> str:
    """The password alone in ``path`` (the file ``file_variable`` names), its one line
    without the line end; warn if others can read the file."""
    lines = read_secret_file(path, "password").strip("\r\n").splitlines()
    if len(lines) != 1 or not lines[0]:
        raise CredentialsError(f"{file_variable}: {path} must hold the password alone, on one line")
    return lines[0]


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """Credentials from the environment (see module docstring for the order)."""
    env = os.environ if env is None else env
    password = password_from(env, ENV_PASSWORD, ENV_PASSWORD_FILE)
    if env.get(ENV_USERNAME) or password:
        if not (env.get(ENV_USERNAME) and password):
            raise CredentialsError(f"set both {ENV_USERNAME} and {ENV_PASSWORD} (or {ENV_PASSWORD_FILE})")
        return Credentials(env[ENV_USERNAME], password)
    if env.get(ENV_FILE):
        return load_credentials_file(env[ENV_FILE])
    if env.get(HS_USERNAME) and env.get(HS_PASSWORD):
        return Credentials(env[HS_USERNAME], env[HS_PASSWORD])
    raise CredentialsError(
        f"no HSDS credentials: set {ENV_USERNAME}/{ENV_PASSWORD}, {ENV_FILE}=<file with "
        f"user:password>, or {HS_USERNAME}/{HS_PASSWORD}"
    )


def write_private_file(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, atomically (tmp file + rename).

    The temporary file is created 0600 by :func:`tempfile.mkstemp`, so the secret
    is never readable by others, not even for an instant.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_credentials_file(path: str | os.PathLike[str], credentials: Credentials) -> Path:
    """Store ``credentials`` as a 0600 ``user:password`` file."""
    return write_private_file(path, credentials.as_line() + "\n")
