"""Exec probe: exit 0 when a dranspose service is registered in Redis.

Usage: registered.py KIND NAME   (KIND: worker, ingester or reducer; NAME may be
env:VAR to read the name from an environment variable). dranspose services
refresh their key dranspose:KIND:NAME:config every few seconds with a 10 s TTL,
so the key exists only while the service's main loop runs.
"""

import os
import sys

import redis


def main() -> int:
    kind, name = sys.argv[1], sys.argv[2]
    if name.startswith("env:"):
        name = os.environ[name[4:]]
    if kind == "reducer":
        name = "reducer"
    password = None
    password_file = os.environ.get("STREAMTOMO_REDIS_PASSWORD_FILE")
    if password_file:  # the chart's Redis: the password is a file of its Secret, not in REDIS_URL
        with open(password_file, encoding="utf-8") as file:
            password = file.read().rstrip("\r\n")
    client = redis.from_url(os.environ["REDIS_URL"], password=password, socket_timeout=3, socket_connect_timeout=3)
    key = f"dranspose:{kind}:{name}:config"
    if client.exists(key):
        return 0
    print(f"{key} is not in Redis", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
