"""Read the next objects while the current one is being sent.

A retrieval sends instances one after the other; reading them one after the
other as well adds each read's latency (a few milliseconds per S3 GET) to
the send. ``read_ahead`` keeps a few reads in flight on worker threads,
bounded by a count and by bytes, and hands the results back in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(read: Callable[[T], R], items: Sequence[T], *, window: int = 4,
               max_bytes: int = 64 * 1024 * 1024, size: Callable[[T], int] | None = None) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for each item, in order, with up to ``window`` reads
    (and at most ``max_bytes`` by ``size``, but always one) in flight.

    An exception of ``read`` is raised where its item would have been yielded;
    reads not yet consumed are cancelled when the iterator is closed.
    """
    if window <= 1 or len(items) <= 1:
        for item in items:
            yield item, read(item)
        return
    pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="ilm-read")
    pending: deque[tuple[T, Future[R], int]] = deque()
    in_flight = 0
    nxt = 0
    try:
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < window:
                n = size(items[nxt]) if size else 0
                if pending and in_flight + n > max_bytes:
                    break
                pending.append((items[nxt], pool.submit(read, items[nxt]), n))
                in_flight += n
                nxt += 1
            item, fut, n = pending.popleft()
            data = fut.result()
            in_flight -= n
            yield item, data
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
