"""An XADD whose answer came after the socket timeout is looked up, not taken for lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from streamtomo.app import stalled_writes


def answer_late_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next answer read is not waited for: what redis-py does when a process was
    stopped past the socket timeout while the command was under way (Redis ran it,
    and its answer waits unread)."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import TimeoutError as RedisTimeout

    original = Connection.read_response
    late = [True]

    async def read_response(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if late.pop() if late else False:
            await asyncio.sleep(0.2)  # Redis answers meanwhile
            raise RedisTimeout(f"Timeout reading from {self.host}:{self.port}")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "read_response", read_response)


def xadd_then_read(
    redis_url: str, fields: dict[str, str], monkeypatch: pytest.MonkeyPatch, plain: bool = False
) -> tuple[Any, list[Any]]:
    import redis.asyncio as redis

    async def main() -> tuple[Any, list[Any]]:
        client = redis.from_url(redis_url)
        try:
            await client.ping()  # connected: the next answer read is the XADD's
            answer_late_once(monkeypatch)
            if plain:
                added = await client.execute_command("XADD", "s", "*", *next(iter(fields.items())))  # type: ignore[no-untyped-call]
            else:
                added = await client.xadd("s", fields)  # type: ignore[arg-type]
            entries: list[Any] = await client.xrange("s")  # type: ignore[assignment]
            return added, entries
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_an_xadd_answered_late_returns_the_entry_redis_added_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.exceptions import TimeoutError as RedisTimeout

    stalled_writes.install()
    # What dranspose's loops met: the loop's task died with it.
    with pytest.raises(RedisTimeout):
        xadd_then_read(redis_url, {"data": "first"}, monkeypatch, plain=True)
    with caplog.at_level(logging.WARNING, logger=stalled_writes.__name__):
        added, entries = xadd_then_read(redis_url, {"data": "second"}, monkeypatch)
    # Each once: the late answer's entry is the one returned, not added again.
    assert [dict(fields) for _, fields in entries] == [{b"data": b"first"}, {b"data": b"second"}]
    assert added == entries[-1][0]
    assert "Redis has the entry" in caplog.text


def test_same_fields_compares_as_text() -> None:
    assert stalled_writes.same_fields({b"data": b"x"}, {"data": "x"})
    assert not stalled_writes.same_fields({b"data": b"x"}, {"data": "y"})


def test_an_xadd_in_a_pipeline_is_queued_as_before(redis_url: str) -> None:
    """The reducer posts its updates in a pipeline (streamtomo.app.result_batches): a
    wrapper that answered there with a coroutine queued nothing, and the controller
    waited for those updates for good."""
    import redis.asyncio as redis

    stalled_writes.install()

    async def main() -> list[Any]:
        client = redis.from_url(redis_url)
        try:
            async with client.pipeline() as pipe:
                assert pipe.xadd("s", {"data": "a"}) is pipe
                pipe.xadd("s", {"data": "b"})
                await pipe.execute()
            entries: list[Any] = await client.xrange("s")  # type: ignore[assignment]
            return entries
        finally:
            await client.aclose()

    assert [dict(fields) for _, fields in asyncio.run(main())] == [{b"data": b"a"}, {b"data": b"b"}]
