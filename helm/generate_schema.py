"""Generate helm/streamtomo/values.schema.json from values.schema.yaml.

The YAML source carries the comments; Helm reads only the JSON. Run after
editing the source:  .venv/bin/python helm/generate_schema.py
With --check, exit 1 (and change nothing) when the JSON is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "streamtomo"
SOURCE = CHART / "values.schema.yaml"
TARGET = CHART / "values.schema.json"


def render() -> str:
    schema = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
