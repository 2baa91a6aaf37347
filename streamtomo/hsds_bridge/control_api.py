"""A small control endpoint beside the HDF REST API: live parameter changes.

``GET /streamtomo/parameters`` lists the parameters a viewer may change with their
current values; ``POST /streamtomo/parameters/{name}`` (body: the value as text)
hands the change to the reducer's sink, which validates it and forwards it to the
workers (dranspose parameter). Only the names in ``LIVE_PARAMETERS`` are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from aiohttp import web

LIVE_PARAMETERS = ("center", "filter", "slice_rows", "slice_size")


class ParameterError(ValueError):
    """The sink refused a value; the message names value and what is allowed."""


ParameterSink = Callable[[str, str], None]
ParameterSource = Callable[[], Mapping[str, str]]

SINK_KEY: web.AppKey[ParameterSink | None] = web.AppKey("parameter_sink")
SOURCE_KEY: web.AppKey[ParameterSource | None] = web.AppKey("parameter_source")


async def get_parameters(request: web.Request) -> web.Response:
    source = request.app[SOURCE_KEY]
    if source is None:
        raise web.HTTPNotFound(reason="this server has no pipeline attached")
    values = {k: v for k, v in source().items() if k in LIVE_PARAMETERS}
    return web.json_response({"parameters": values, "writable": request.app[SINK_KEY] is not None})


async def post_parameter(request: web.Request) -> web.Response:
    sink = request.app[SINK_KEY]
    name = request.match_info["name"]
    if sink is None:
        raise web.HTTPForbidden(reason="parameter changes are not enabled on this server")
    if name not in LIVE_PARAMETERS:
        raise web.HTTPBadRequest(reason=f"parameter {name!r} cannot be changed live; allowed: {list(LIVE_PARAMETERS)}")
    body = await request.read()
    if len(body) > 1024:
        raise web.HTTPRequestEntityTooLarge(max_size=1024, actual_size=len(body))
    try:
        value = body.decode("utf-8").strip()
        sink(name, value)
    except (UnicodeDecodeError, ParameterError, ValueError) as error:
        raise web.HTTPBadRequest(reason=str(error).replace("\n", " ")[:300]) from None
    return web.Response(text=json.dumps({"name": name, "value": value}), content_type="application/json")


def add_control_routes(app: web.Application, sink: ParameterSink | None, source: ParameterSource | None) -> None:
    app[SINK_KEY] = sink
    app[SOURCE_KEY] = source
    app.router.add_get("/streamtomo/parameters", get_parameters, allow_head=False)
    app.router.add_post("/streamtomo/parameters/{name}", post_parameter)
