"""dranspose events laid out as its ingesters number them: message i of each stream in
event i. A stream that drops or gains a message shifts every later one of its own."""

from __future__ import annotations

from collections.abc import Sequence

from dranspose.event import EventData, StreamData
from dranspose.protocol import EventNumber, StreamName

from streamtomo.pipeline.formats import pcap, stins


def events_by_stream(detector: Sequence[list[bytes]], angle: Sequence[bytes]) -> list[EventData]:
    """Detector messages (STINS parts) and PandA lines, event by event."""
    out = []
    for number in range(max(len(detector), len(angle))):
        streams: dict[StreamName, StreamData] = {}
        if number < len(detector):
            streams[StreamName("detector")] = StreamData(typ=stins.STREAM_TYPE, frames=list(detector[number]))
        if number < len(angle):
            streams[StreamName("angle")] = StreamData(typ=pcap.STREAM_TYPE, frames=[angle[number]])
        out.append(EventData(event_number=EventNumber(number), streams=streams))
    return out
