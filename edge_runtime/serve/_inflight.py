"""The inference requests being answered, and the two ways one ends unanswered: its client leaves
(unless_gone) or the drain runs out of time (InFlight.cut).

Neither ASGI server tells an app that a client left: uvicorn goes on awaiting the handler, whose
inputs would wait their turn in the queue and then be computed for nobody. And uvicorn's own end
of a drain cancels every request still running with a traceback each, without telling the app
how many it cut. So the app watches both itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ClientGone", "Drained", "InFlight", "unless_gone"]

T = TypeVar("T")


@dataclass(frozen=True)
class Drained:
    """How a stopped server's drain ended: `dropped` requests were still unanswered when
    graceful_timeout_s ran out or a second stop signal came (`seconds` after `signal`, the first
    stop signal's number) and were answered 503 unfinished; dropped == 0 when every request was
    answered. `abandoned`: a batch (or a reload's load) was still running in the backend when
    the server stopped waiting for it; the process should then end with os._exit (edge-serve
    does), since interpreter finalization would wait for it or abort under it."""

    signal: int | None
    dropped: int
    seconds: float | None = None
    abandoned: bool = False


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    # Once the body is read, an ASGI server's next message is http.disconnect: when the client
    # closes the connection, or after the response was sent (ASGI spec, HTTP "receive").
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(work: Awaitable[T], receive: Callable[[], Awaitable[dict[str, Any]]]) -> T:
    """`work`'s result; ClientGone if the client leaves first, `work` then cancelled (and with it
    the inputs it queued: the batcher drops them unrun and frees their permits at once). Call it
    only once the request's body has been read: the watch reads the request's next message."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled itself (the drain's cut): so is its work
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    gone.result()  # a failing receive() is said as itself
    raise ClientGone()


class InFlight:
    """The event-loop tasks of the requests being answered. When the drain's time is up, cut()
    cancels those still running; each catches that in its handler (cut_here) and answers."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._cut: set[asyncio.Task] = set()
        self.dropped = 0  # requests the cut ended unanswered

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Around a request's handling, on the event loop."""
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def cut(self) -> int:
        """Cancel every request still being handled (on the event loop); how many there were."""
        running = self._tasks - self._cut
        for task in running:
            task.cancel()
        self._cut |= running
        self.dropped += len(running)
        return len(running)

    def cut_here(self) -> bool:
        """In a request's `except CancelledError`: whether the cut cancelled it. Then the handler
        answers and carries on, the cancellation spent (a cancel from anyone else propagates)."""
        task = asyncio.current_task()
        if task not in self._cut:
            return False
        self._cut.discard(task)
        if hasattr(task, "uncancel"):  # Python 3.11+: the cancel was handled, not pending
            task.uncancel()
        return True
