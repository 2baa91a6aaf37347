"""What a local HSDS's root folder holds, prepared before the server starts.

The three accounts (admin, writer, viewer) and their password file, the settings
HSDS reads (``override.yml``) and which inherited environment variables would
override them, and the file modes that keep the storage its user's only.
:mod:`streamtomo.app.local_hsds` runs the server on it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtomo.hsds_bridge.credentials import Credentials, parse_credentials_line, write_private_file

DEFAULT_BUCKET = "streamtomo"
# HSDS config keys we set in override.yml. Environment variables outrank the
# override file, so any of these inherited from the caller's shell are removed.
SCRUBBED_ENV = (
    "ALLOW_NOAUTH",
    "BUCKET_NAME",
    "ROOT_DIR",
    "PASSWORD_FILE",
    "CORS_DOMAIN",
    "CHUNK_MEM_CACHE_SIZE",
    "LOG_LEVEL",
    "CONFIG_DIR",
    "CONFIG_OVERRIDE_PATH",
    "DEFAULT_PUBLIC",
    "ADMIN_USER",
    "ADMIN_GROUP",
    "PASSWORD_SALT",
    "AWS_S3_GATEWAY",
    "AZURE_CONNECTION_STRING",
    "HS_USERNAME",
    "HS_PASSWORD",
    "HS_ENDPOINT",
)


@dataclass(frozen=True)
class HsdsAccounts:
    """The three accounts of a local server."""

    admin: Credentials
    writer: Credentials
    viewer: Credentials

    def by_name(self) -> dict[str, Credentials]:
        return {c.username: c for c in (self.admin, self.writer, self.viewer)}


def _generate_password() -> str:
    # token_urlsafe never yields ':' (HSDS splits password-file lines on it).
    return secrets.token_urlsafe(24)


def load_or_create_accounts(passwd: Path, writer: str, viewer: str) -> HsdsAccounts:
    existing: dict[str, Credentials] = {}
    if passwd.exists():
        for line in passwd.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                cred = parse_credentials_line(line, source=str(passwd))
                existing[cred.username] = cred

    def get(user: str) -> Credentials:
        return existing.get(user) or Credentials(user, _generate_password())

    accounts = HsdsAccounts(admin=get("admin"), writer=get(writer), viewer=get(viewer))
    lines = [c.as_line() for c in accounts.by_name().values()]
    write_private_file(passwd, "\n".join(lines) + "\n")
    return accounts


def override_yaml(settings: dict[str, Any]) -> str:
    # JSON is valid YAML; it keeps booleans real booleans (an env var "false"
    # would be cast with bool("false") == True by hsds.config).
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())


def make_private(root: Path) -> None:
    """Directories 0700, files 0600 under ``root`` (and ``root`` itself): the
    storage holds every user's data unencrypted, and HSDS itself enforces nothing
    on the files. New files stay private through the servers' umask (077)."""
    os.chmod(root, 0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o700, follow_symlinks=False)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)
