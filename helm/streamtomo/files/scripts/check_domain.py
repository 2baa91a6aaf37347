"""helm test: the reducer's live domain answers over the HDF REST API.

Environment: DOMAIN_URL, DOMAIN, REQUIRE_DOMAIN (true/false), TIMEOUT_S.
The server must answer /about; the domain itself must exist only when
REQUIRE_DOMAIN is true (it appears with the first scan), and is then opened
with h5pyd like a user would.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> int:
    base = os.environ["DOMAIN_URL"].rstrip("/")
    domain = os.environ["DOMAIN"]
    require = os.environ.get("REQUIRE_DOMAIN", "false").lower() == "true"
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_S", "120"))
    problem = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status, body = get(base + "/about")
            if status != 200:
                raise OSError(f"/about answered {status}")
            status, body = get(base + "/?" + urllib.parse.urlencode({"domain": domain}))
        except OSError as exc:
            problem = f"live domain server {base} does not answer: {exc}"
            time.sleep(2)
            continue
        if status == 200:
            json.loads(body)
            if require:
                import h5pyd

                with h5pyd.File(domain, "r", endpoint=base) as f:
                    print("domain keys:", list(f.keys()))
            print(f"live domain OK: {base} {domain}")
            return 0
        if status < 500 and not require:
            print(f"live domain server OK: {base} (domain {domain}: HTTP {status}, no scan yet)")
            return 0
        problem = f"domain {domain} answered HTTP {status}"
        time.sleep(2)
    print(f"FAIL: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
