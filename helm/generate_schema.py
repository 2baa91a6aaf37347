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


HEX = "[0-9a-fA-F]{1,4}"
OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = f"{OCTET}(\\.{OCTET}){{3}}"


def _before_gap(k: int) -> str:
    """``k`` groups, then the ``::`` that stands for the zero groups left out."""
    return "::" if k == 0 else f"({HEX}:){{{k - 1}}}{HEX}::"


def ipv6_pattern() -> str:
    """Every textual IPv6 address and nothing else, as one regular expression without
    look-ahead (Helm validates with Go's RE2): eight groups, or ``k`` groups, ``::`` and
    at most ``7 - k`` more, each with the last two groups written as an IPv4 address too.
    A loose shape let "1::2::3" or "12345::" through to ``helm install``, where the API
    server refused the release's NetworkPolicies."""
    forms = [f"({HEX}:){{7}}{HEX}", f"({HEX}:){{6}}{IPV4}"]
    for k in range(8):
        more = 7 - k  # groups after the gap
        after = f"({HEX}(:{HEX}){{0,{more - 1}}})?" if more >= 2 else (f"({HEX})?" if more == 1 else "")
        forms.append(_before_gap(k) + after)
    for k in range(6):
        more = 5 - k  # groups between the gap and the IPv4 tail
        forms.append(_before_gap(k) + (f"({HEX}:){{0,{more}}}" if more else "") + IPV4)
    return "(" + "|".join(forms) + ")"


def cidr_pattern() -> str:
    """An IPv4 CIDR (octets to 255, prefix to 32) or an IPv6 one (prefix to 128)."""
    return f"^({IPV4}/(3[0-2]|[12]?[0-9])|{ipv6_pattern()}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"


def render() -> str:
    schema = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    schema["definitions"]["cidr"]["pattern"] = cidr_pattern()  # too long to keep by hand
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
