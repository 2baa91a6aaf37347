"""A blocking XREAD that Redis did not answer within the socket timeout reads as empty."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamtomo.app import blocking_reads


def test_a_blocking_read_past_the_socket_timeout_reads_as_empty_and_the_next_one_works(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py 8 gives every connection a 5 s socket timeout; a process stopped for
    longer meets it on the blocking read under way. Here the timeout is made shorter
    than the block, which gives redis-py the same TimeoutError."""
    import redis.asyncio as redis
    from redis.exceptions import TimeoutError as RedisTimeout

    blocking_reads.install()

    async def main() -> tuple[object, object]:
        client = redis.from_url(f"{redis_url}?protocol=3", socket_timeout=0.3)
        try:
            # What dranspose's loops met: the loop's task died with it.
            with pytest.raises(RedisTimeout):
                await client.execute_command("XREAD", "BLOCK", 2000, "STREAMS", "s", "0")
            timed_out = await client.xread({"s": "0"}, block=2000)
            await client.xadd("s", {"data": "x"})
            again = await client.xread({"s": "0"}, block=2000)  # a new connection, the right answer
            return timed_out, again
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="streamtomo.app.blocking_reads"):
        timed_out, again = asyncio.run(main())
    assert timed_out == {}
    assert isinstance(again, dict) and [fields for _, fields in again[b"s"][0]] == [{b"data": b"x"}]
    assert "got no answer in time" in caplog.text and "reading again" in caplog.text


def test_a_read_without_block_still_raises(redis_url: str) -> None:
    """Not a wait: a timeout there is an error the caller must see."""
    import redis.asyncio as redis
    from redis.exceptions import TimeoutError as RedisTimeout

    blocking_reads.install()

    async def main() -> None:
        client = redis.from_url(redis_url, socket_timeout=0.3)
        try:
            await client.execute_command("CLIENT", "PAUSE", 2000, "ALL")
            other = redis.from_url(redis_url, socket_timeout=0.3)
            try:
                with pytest.raises(RedisTimeout):
                    await other.xread({"s": "0"})
            finally:
                await other.aclose()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_empty_reply_is_the_one_of_the_connections_protocol(redis_url: str) -> None:
    """What an XREAD that found nothing returns: a caller written for RESP2 reads a list."""
    import redis.asyncio as redis

    blocking_reads.install()

    async def main(protocol: int) -> tuple[object, object]:
        client = redis.from_url(f"{redis_url}?protocol={protocol}", socket_timeout=0.3)
        try:
            found_nothing = await client.xread({"none": "$"}, block=100)
            timed_out = await client.xread({"none": "$"}, None, 2000)  # block given positionally
            return found_nothing, timed_out
        finally:
            await client.aclose()

    for protocol in (2, 3):
        found_nothing, timed_out = asyncio.run(main(protocol))
        assert timed_out == found_nothing and type(timed_out) is type(found_nothing), protocol
