"""Option (b): a targeted monkeypatch of faust 0.15.3's per-message fetch path.

faust.transport.consumer.Consumer._drain_messages awaits, for EVERY message,
    await self.wait_first(callback(message), self.suspend_flow.wait())
and mode's Service.wait_first wraps 4 awaitables in tasks (callback, suspend_flow,
stopped, crashed), runs asyncio.wait(FIRST_COMPLETED) and cancels 3 of them.
The patch awaits the callback directly while the flow is not suspended (the slow
path is kept when it is).  Semantics change: a callback blocked on a full stream
buffer is no longer abandoned when a rebalance suspends the flow -- measured only,
NOT recommended for production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from faust.transport import consumer as fc
from mode import Service

_ORIG = fc.Consumer._drain_messages


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - benchmark only
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = fc.CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspended = self.suspend_flow.is_set
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator, getmany(timeout=1.0))
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended():
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)  # the patch
                        set_read_offset(tp, offset)
                unset_flag(flag_consumer_fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def apply() -> None:
    fc.Consumer._drain_messages = _drain_messages


def revert() -> None:
    fc.Consumer._drain_messages = _ORIG
