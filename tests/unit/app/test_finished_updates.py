"""An XREAD of the controller's updates ends at its first finished update."""

from __future__ import annotations

import asyncio
import json

import pytest

from streamtomo.app import finished_updates
from streamtomo.app.finished_updates import through_first_finished


def _update(n: int, finished: bool = False) -> tuple[str, dict[str, str]]:
    return (f"1-{n}", {"data": json.dumps({"mapping_uuid": "u", "parameters_version": {}, "finished": finished})})


def test_a_read_is_cut_after_the_finished_update_so_the_newest_applied_is_it() -> None:
    reply = {"s": [[_update(0), _update(1, finished=True), _update(2), _update(3)]]}
    entries = through_first_finished(reply, "s")["s"][0]
    assert [e[0] for e in entries] == ["1-0", "1-1"]  # dranspose applies entries[-1]: the finished one


@pytest.mark.parametrize(
    "reply",
    [
        {"s": [[_update(0), _update(1)]]},  # none finished
        {"s": [[_update(0), _update(1, finished=True)]]},  # finished is the newest already
        {"other": [[_update(0, finished=True), _update(1)]]},  # another stream
        [["s", [_update(0, finished=True), _update(1)]]],  # RESP2 form: not what dranspose reads
        {"s": [[("1-0", {"data": "not json finished"}), _update(1)]]},
    ],
)
def test_other_reads_are_left_as_they_are(reply: object) -> None:
    before = json.dumps(reply)
    assert json.dumps(through_first_finished(reply, "s")) == before


def test_dransposes_newest_of_each_read_reaches_the_finished_update_on_a_real_redis(redis_url: str) -> None:
    """As dranspose's register loop reads: newest entry of each XREAD, from the last id on."""
    import redis.asyncio as redis
    from dranspose.protocol import RedisKeys

    finished_updates.install()
    stream = RedisKeys.updates()

    async def main() -> list[bool]:
        client = redis.from_url(f"{redis_url}?decode_responses=True&protocol=3")
        for n, finished in enumerate([False, True, False]):
            await client.xadd(stream, _update(n, finished)[1])
        applied, last = [], "0"
        while True:
            reply = await client.xread({stream: last}, block=100)
            if stream not in reply:
                break
            last, fields = reply[stream][0][-1]
            applied.append(json.loads(fields["data"])["finished"])
        await client.aclose()
        return applied

    assert asyncio.run(main()) == [True, False]  # without install: [False], the finished one skipped
