"""Controller postStart hook: post the pipeline parameters to the dranspose API.

Usage: load_parameters.py PARAMETERS_JSON CONTROLLER_URL TIMEOUT_S
PARAMETERS_JSON is a dranspose parameter file ([{"name": ..., "data": ...}]).
Waits for the API, posts every parameter, exits non-zero (the container then
restarts and tries again) when the API does not answer in time.
"""

import json
import sys
import time
import urllib.parse
import urllib.request


def main() -> int:
    path, base, timeout = sys.argv[1], sys.argv[2].rstrip("/"), float(sys.argv[3])
    with open(path, encoding="utf-8") as fh:
        params = json.load(fh)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/api/v1/config", timeout=5) as resp:
                resp.read()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"controller API {base} did not answer: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    for param in params:
        name = urllib.parse.quote(param["name"], safe="")
        data = param["data"]
        body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        req = urllib.request.Request(f"{base}/api/v1/parameter/{name}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
        print(f"posted parameter {param['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
