"""The one HTTP client of the dranspose controller's API (``/api/v1/...``).

Both the application layer (``streamtomo up``/``play``) and the reducer (which shares
darks and flats with every worker through a binary parameter) talk to the controller
through this module; it uses the standard library only.

The call most code needs::

    from streamtomo.controller_client import post_parameter

    post_parameter(controller_url, "references", data, timeout=10.0, tolerant=True)

``tolerant=True`` logs a WARNING and returns None when the controller cannot be
reached or refuses, instead of raising: the reducer must not fail a scan because the
controller is briefly away.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
# The controller answers /api/v1/config from a view of the services it refreshes at
# most every 0.5 s.
CONTROLLER_CACHE_S = 0.5


class ControllerError(RuntimeError):
    """The controller answered with an error; the message carries its answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControllerTimeout(ControllerError):
    """The services did not reach the awaited state in time."""


def post_parameter(
    controller_url: str,
    name: str,
    data: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tolerant: bool = False,
) -> str | None:
    """Set the dranspose parameter ``name`` to ``data`` (bytes, as the controller stores them).

    Returns the controller's parameters hash after the change. With ``tolerant`` a
    failure (unreachable controller, error status, timeout) is logged as a WARNING
    and None is returned; otherwise it raises :class:`OSError` or :class:`ControllerError`.
    """
    try:
        return ControllerClient(controller_url, timeout=timeout).set_parameter(name, data)
    except (OSError, ControllerError, ValueError) as error:
        if not tolerant:
            raise
        logger.warning("could not send parameter %s to the controller at %s: %s", name, controller_url, error)
        return None


class ControllerClient:
    """A dranspose controller at ``url`` (e.g. ``http://127.0.0.1:5000``).

    Network errors raise :class:`OSError` (``urllib``'s); an error status raises
    :class:`ControllerError` with the controller's answer.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
    ) -> bytes:
        try:
            request = urllib.request.Request(f"{self.url}/api/v1/{path}", data=data, method=method)
        except ValueError as error:  # not a URL at all ("garbage", "http://[::1")
            raise ControllerError(f"{self.url!r} is no controller URL (http://HOST:PORT): {error}") from None
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout if timeout is None else timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            raise ControllerError(f"{method} {path}: {error.code} {body}".strip(), error.code) from None

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        raw = self._request(method, path, data, timeout, "application/json" if data is not None else None)
        return json.loads(raw) if raw else None

    # -- reading --------------------------------------------------------------------
    def config(self, timeout: float | None = None) -> dict[str, Any]:
        """``/api/v1/config``: the services the controller knows and their parameter hashes."""
        result: dict[str, Any] = self._json("GET", "config", timeout=timeout)
        return result

    def progress(self, timeout: float | None = None) -> dict[str, Any]:
        """``/api/v1/progress``: completed and total events, ``finished``."""
        result: dict[str, Any] = self._json("GET", "progress", timeout=timeout)
        return result

    def reduction(self, timeout: float | None = None) -> dict[str, Any] | None:
        """``/api/v1/reduction`` (streamtomo's controller): completed events and the
        results the reducer has not reported yet (``to_reduce``); None from a
        controller without it."""
        try:
            result: dict[str, Any] = self._json("GET", "reduction", timeout=timeout)
        except ControllerError as error:
            if error.status == 404:
                return None
            raise
        return result

    def parameter_names(self, timeout: float | None = None) -> list[str]:
        """Names of every parameter the services describe."""
        return [str(p["name"]) for p in self._json("GET", "parameters", timeout=timeout)]

    def get_parameter(self, name: str, timeout: float | None = None) -> bytes | None:
        """The parameter's current bytes, or None if the controller holds no value yet."""
        try:
            return self._request("GET", f"parameter/{name}", timeout=timeout)
        except ControllerError as error:
            if error.status == 404:
                return None
            raise

    # -- changing -------------------------------------------------------------------
    def set_parameter(self, name: str, data: bytes, timeout: float | None = None) -> str:
        """Set one parameter; returns the controller's parameters hash after it."""
        return str(json.loads(self._request("POST", f"parameter/{name}", data, timeout)))

    def set_parameter_if_changed(self, name: str, data: bytes) -> str | None:
        """Like :meth:`set_parameter`, but None (and no update sent to the services)
        when the controller already holds that value."""
        if self.get_parameter(name) == data:
            return None
        return self.set_parameter(name, data)

    def set_sequence(self, mapping: dict[str, Any], timeout: float = 60.0) -> str:
        """Post a scan's mapping; returns its uuid once every service has it."""
        return str(self._json("POST", "sequence", mapping, timeout=timeout))

    def stop(self) -> None:
        """End the current scan (the reducer finishes with what it has)."""
        self._request("POST", "stop", b"")

    # -- waiting --------------------------------------------------------------------
    def wait_consistent(self, target: str | None, timeout: float, interval: float = 0.1) -> None:
        """Until every service holds the controller's parameters, and the controller knows.

        The controller's view may be up to 0.5 s old: right after a change it can still
        show the state before it, consistent. So wait for ``target`` (the hash a POST
        returned, if any), and for consistency seen twice across a cache period: then
        the controller's own consistency check, which runs every 2 s on that view, has
        no stale inconsistency to "repair" with an update. Such an update sent while a
        new mapping is distributed would reach services after it and, as dranspose
        applies only the last queued update, leave ingesters without active streams.
        Unreachable moments count as not yet; raises :class:`ControllerTimeout`.
        """
        deadline = time.monotonic() + timeout
        first: tuple[float, str] | None = None
        last_error: BaseException | None = None
        while True:
            try:
                config = self.config(timeout=5)
                if parameters_consistent(config, target):
                    now, current = time.monotonic(), str(config.get("parameters_hash"))
                    if first is None or first[1] != current:
                        first = (now, current)
                    elif now - first[0] > CONTROLLER_CACHE_S + 0.1:
                        return
                else:
                    first = None
            except (OSError, ValueError, ControllerError) as error:
                last_error = error
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise ControllerTimeout(f"parameters on every service not consistent within {timeout:.0f} s{detail}")
            time.sleep(interval)


def parameters_consistent(config: dict[str, Any], target: str | None = None) -> bool:
    """Whether every service in a ``/api/v1/config`` answer has the controller's
    parameters (and, if given, the parameters hash ``target``)."""
    want = config.get("parameters_hash") if target is None else target
    services = [*config["ingesters"], *config["workers"], *([config["reducer"]] if config.get("reducer") else [])]
    return (
        config.get("parameters_hash") == want
        and bool(services)
        and all(s.get("parameters_hash") == want for s in services)
    )
