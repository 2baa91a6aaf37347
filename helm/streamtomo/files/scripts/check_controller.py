"""helm test: the controller answers and the whole ensemble is registered.

Environment: CONTROLLER_URL, EXPECTED_STREAMS (JSON list), EXPECTED_WORKERS,
EXPECTED_PARAMETERS (JSON list), TIMEOUT_S.
"""

import json
import os
import sys
import time
import urllib.request


def main() -> int:
    base = os.environ["CONTROLLER_URL"].rstrip("/")
    streams = set(json.loads(os.environ["EXPECTED_STREAMS"]))
    workers = int(os.environ["EXPECTED_WORKERS"])
    params = set(json.loads(os.environ["EXPECTED_PARAMETERS"]))
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_S", "120"))
    problem = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/api/v1/config", timeout=5) as resp:
                state = json.load(resp)
        except OSError as exc:
            problem = f"controller API {base} does not answer: {exc}"
            time.sleep(2)
            continue
        have_streams = {s for ing in state.get("ingesters", []) for s in ing.get("streams", [])}
        have_workers = len(state.get("workers", []))
        have_params = set(state.get("parameters_version", {}))
        problems = []
        if not streams <= have_streams:
            problems.append(f"ingester streams {sorted(have_streams)}, want {sorted(streams)}")
        if have_workers < workers:
            problems.append(f"{have_workers} workers registered, want {workers}")
        if state.get("reducer") is None:
            problems.append("no reducer registered")
        if not params <= have_params:
            problems.append(f"parameters {sorted(have_params)}, want {sorted(params)}")
        if not problems:
            print(f"controller OK: streams {sorted(have_streams)}, {have_workers} workers, reducer, parameters")
            return 0
        problem = "; ".join(problems)
        time.sleep(2)
    print(f"FAIL: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
