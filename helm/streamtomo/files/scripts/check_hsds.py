"""helm test: HSDS answers for the read-only viewer account and its bucket exists.

Environment: HSDS_URL, HS_USERNAME, HS_PASSWORD_FILE, TIMEOUT_S, and optionally
FOLDER: the live domain's folder, which the viewer account must be able to read
(created by the bootstrap Job).
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def get(url: str, auth: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> int:
    base = os.environ["HSDS_URL"].rstrip("/")
    with open(os.environ["HS_PASSWORD_FILE"], encoding="utf-8") as file:  # a file of the Secret
        password = file.read().rstrip("\r\n")
    token = f"{os.environ['HS_USERNAME']}:{password}".encode()
    auth = "Basic " + base64.b64encode(token).decode()
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_S", "120"))
    problem = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status, body = get(base + "/about", auth)
            about = json.loads(body) if status == 200 else {}
            if status != 200 or about.get("state") != "READY":
                problem = f"/about answered {status} {body[:200]!r}"
            else:
                # the bucket directory exists: listing the top-level folders works
                status, body = get(base + "/domains", auth)
                if status != 200:
                    problem = f"/domains answered {status} {body[:200]!r} (bucket missing?)"
                elif folder := os.environ.get("FOLDER", ""):
                    query = urllib.parse.urlencode({"domain": folder})
                    status, body = get(f"{base}/?{query}", auth)
                    if status == 200:
                        print(f"HSDS OK: {base} READY, bucket present, {folder} readable")
                        return 0
                    problem = f"folder {folder} answered {status} {body[:200]!r}"
                else:
                    print(f"HSDS OK: {base} {about.get('hsds_version', '')} READY, bucket present")
                    return 0
        except OSError as exc:
            problem = f"HSDS {base} does not answer: {exc}"
        time.sleep(2)
    print(f"FAIL: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
