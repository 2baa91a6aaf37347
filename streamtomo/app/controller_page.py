"""The dranspose controller's status page, as streamtomo's controller processes serve it.

dranspose's own page (``dranspose/frontend/index.html``) writes the controller's
progress, configuration and the services' log lines into the page with ``innerHTML``.
Log lines carry request paths and stream input that anyone may put there: one request
from another site, refused and logged with its path, planted an ``<img onerror>``
that ran in the controller's origin and stopped the scan, and under a policy that runs
no such script a planted ``<meta http-equiv=refresh>`` still sent whoever opened the page
to another site, every visit while the line stayed in the log's last 1000. This page
shows the same three things as text (``textContent``): nothing in them is markup. It is
served with a Content-Security-Policy that runs only its own script (by hash), fetches
only from its own origin and submits no form (:func:`page_policy`).
"""

from __future__ import annotations

import base64
import hashlib
import re

SCRIPT = """
const levels = {WARNING: "#c5c226", ERROR: "#e26f4d", CRITICAL: "#f00"};
function show(id, value) {
  document.getElementById(id).textContent = JSON.stringify(value, null, 2);
}
function logTable(lines) {
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const name of ["created", "levelname", "name", "lineno", "msg"]) {
    const cell = document.createElement("th");
    cell.textContent = name;
    head.appendChild(cell);
  }
  for (const line of lines) {
    const row = table.insertRow();
    row.style.backgroundColor = levels[line.levelname] || "#fff";
    const created = new Date(parseFloat(line.created) * 1000).toLocaleString();
    for (const value of [created, line.levelname, line.name, line.lineno, line.msg]) {
      row.insertCell().textContent = String(value);
    }
  }
  return table;
}
async function update() {
  try {
    show("progress", await (await fetch("/api/v1/progress")).json());
    show("config", await (await fetch("/api/v1/config")).json());
    const lines = await (await fetch("/api/v1/logs?level=INFO")).json();
    document.getElementById("logs").replaceChildren(logTable(Array.isArray(lines) ? lines.reverse() : []));
  } catch (error) {
    console.log("unable to fetch", error);
  }
  setTimeout(update, 5000);
}
update();
"""

PAGE = f"""<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>dranspose controller</title>
<style>table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #888; padding: 2px 4px; }}</style>
</head>
<body>
<h2>Progress</h2>
<pre id="progress"></pre>
<h2>Configuration</h2>
<pre id="config"></pre>
<h2>Logs</h2>
<div id="logs"></div>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _hashes(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    found = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)
    return found or "'none'"


def page_policy(page: str) -> str:
    """The Content-Security-Policy of ``page``: its inline scripts and styles by hash
    (an injected handler or style would need 'unsafe-inline'), fetches to its own
    origin, no form, no frame, no plugin, no base."""
    return (
        f"default-src 'none'; script-src {_hashes(page, 'script')}; style-src {_hashes(page, 'style')}; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


POLICY = page_policy(PAGE)
