"""Post-install/upgrade hook: create the folders of the live domain on HSDS.

HSDS lets only the admin create top-level folders, so the reducer's account
could not publish /home/streamtomo/live.h5 on a fresh server. This creates
every missing parent folder of DOMAIN: the top-level one owned by the admin,
the deeper ones owned by WRITER_USER (who may then create the domain), and
gives VIEWER_USER read-only access to the domain's folder; HSDS copies a
folder's user ACLs to every domain created in it, so the viewer account can
read (and only read) what the pipeline publishes. Idempotent.

Environment: HSDS_URL, ADMIN_USER, ADMIN_PASSWORD_FILE (a file of the Secret:
the password is in no environment), WRITER_USER, VIEWER_USER, DOMAIN, TIMEOUT_S.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def request(method: str, url: str, auth: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parent_folders(domain: str) -> list[str]:
    parts = [p for p in domain.split("/") if p][:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def main() -> int:
    base = os.environ["HSDS_URL"].rstrip("/")
    admin = os.environ["ADMIN_USER"]
    with open(os.environ["ADMIN_PASSWORD_FILE"], encoding="utf-8") as file:
        password = file.read().rstrip("\r\n")  # a file written by hand ends in a newline
    token = f"{admin}:{password}".encode()
    auth = "Basic " + base64.b64encode(token).decode()
    writer = os.environ["WRITER_USER"]
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_S", "300"))
    while True:
        try:
            status, body = request("GET", base + "/about", auth)
            if status == 200 and json.loads(body).get("state") == "READY":
                break
            problem = f"/about answered {status}"
        except OSError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            print(f"HSDS {base} is not ready: {problem}", file=sys.stderr)
            return 1
        time.sleep(2)
    for depth, folder in enumerate(parent_folders(os.environ["DOMAIN"])):
        url = base + "/?" + urllib.parse.urlencode({"domain": folder})
        status, body = request("GET", url, auth)
        if status == 200:
            print(f"{folder}/ exists")
            continue
        if status != 404:
            print(f"GET {folder}/ answered {status}: {body[:200]!r}", file=sys.stderr)
            return 1
        owner = admin if depth == 0 else writer
        status, body = request("PUT", url, auth, {"folder": True, "owner": owner})
        if status not in (200, 201):
            print(f"creating {folder}/ answered {status}: {body[:200]!r}", file=sys.stderr)
            return 1
        print(f"created {folder}/ (owner {owner})")
    folders = parent_folders(os.environ["DOMAIN"])
    viewer = os.environ.get("VIEWER_USER", "")
    if viewer and folders:
        acl = {"create": False, "read": True, "update": False, "delete": False, "readACL": False, "updateACL": False}
        url = f"{base}/acls/{urllib.parse.quote(viewer)}?" + urllib.parse.urlencode({"domain": folders[-1]})
        status, body = request("PUT", url, auth, acl)
        if status not in (200, 201):
            print(f"read ACL for {viewer} on {folders[-1]}/ answered {status}: {body[:200]!r}", file=sys.stderr)
            return 1
        print(f"{viewer} may read {folders[-1]}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
