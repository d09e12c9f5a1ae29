"""Running the app under uvicorn, with the signals a device's service manager sends.

SIGTERM (systemd stop): connections already waiting to be accepted are taken up (_take_up_queued),
then uvicorn stops accepting connections, lets every in-flight request finish
(up to graceful_timeout_s), then the app's lifespan drains the queue and stops the worker, and
run() returns how that went (Drained). Requests still unanswered when graceful_timeout_s is up
are cut by us, not by uvicorn: they are answered 503 and counted, in one log line. SIGHUP: reload
the artifact directory in the background (_reload.py); one that arrives while the model is still
loading waits for the load, then reloads if DIR moved.
uvicorn is imported here only; it parses HTTP with httptools and runs uvloop when they are installed
(ServeConfig.http / loop), else with the pure-Python h11 and asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from pathlib import Path

from edge_runtime.serve._config import ServeConfig, server_stack
from edge_runtime.serve._inflight import Drained
from edge_runtime.serve._service import Service

__all__ = ["run"]

log = logging.getLogger("edge_runtime.serve")

# uvicorn cuts what is still running this long after our own cut: only requests the app does not
# track (the admin routes) can still be running then. Its cut logs a traceback per request.
UVICORN_BACKSTOP_S = 5.0
# At a stop, connections the kernel accepted before it are taken up and answered, not reset with
# the listening socket (uvicorn's shutdown closes it first, then closes every connection whose
# request it has not read: a review, session 52, saw 15-29 of 30 fully sent requests reset, and
# the exit status said every request was answered). For at most TAKE_UP_S, in steps of
# TAKE_UP_STEP_S, until a step adds no connection and no request.
TAKE_UP_S = 1.0
TAKE_UP_STEP_S = 0.05


async def _take_up_queued(sock: socket.socket, state) -> tuple[int, int]:
    """Accept what waits in `sock`'s backlog and read those connections' requests before uvicorn's
    shutdown: the backlog is shrunk to nothing first (a connection attempted from now on waits
    for its SYN to be retried, by which time the socket is closed and it is refused, as before),
    then the loop runs until a step adds neither a connection nor a request (`state`: uvicorn's
    ServerState). Returns how many connections it accepted and requests it read meanwhile."""
    try:
        sock.listen(0)
    except OSError:  # closed already: nothing queued to take up
        return 0, 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TAKE_UP_S
    first = seen = (len(state.connections), state.total_requests)
    while loop.time() < deadline:
        await asyncio.sleep(TAKE_UP_STEP_S)
        now = (len(state.connections), state.total_requests)
        if now == seen:
            break
        seen = now
    return max(0, len(state.connections) - first[0]), state.total_requests - first[1]


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening: connections are refused until the model
    is loaded and uvicorn listens). OSError naming the address when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror} (--host)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "; another server uses it: pick another --port" if exc.errno == errno.EADDRINUSE else ""
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def run(config: ServeConfig, service: Service | None = None) -> Drained:
    """Load, verify and serve `config.path` until SIGTERM/SIGINT; returns after draining, saying
    how many requests the drain had to drop. Raises the load error (EdgeRuntimeError) if the
    model cannot be served at all."""
    import uvicorn

    from edge_runtime.serve._app import create_app

    http, loop = server_stack(config)
    # SIGHUP's default action ends the process (exit 129): a `systemctl reload` while the model
    # loads (seconds on a small board) would kill the service. Until the reloader exists, a
    # SIGHUP is remembered and acted on once the model has loaded (below).
    hup_while_starting: list[int] = []

    def _hup_while_starting(signum, frame):
        log.info("SIGHUP while starting: the reload waits until the model being loaded is up")
        hup_while_starting.append(signum)

    original_hup = signal.signal(signal.SIGHUP, _hup_while_starting)
    hup_while_starting.extend(getattr(original_hup, "recorded", ()))  # edge-serve's before this (cli_serve)
    sock = None
    try:
        # Bound before the model loads: a taken port or a wrong host is an error at once, in our
        # words (uvicorn would log it and exit 3 after the load), and port 0 gets its real number.
        sock = _listen(config.host, config.port)
        service = service or Service(config)
        app = create_app(service)
    except BaseException:
        if sock is not None:
            sock.close()
        signal.signal(signal.SIGHUP, original_hup)
        raise

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # the drain's clock starts at the first signal
            service.stop_requested(sig)
            if not self.should_exit:
                super().handle_exit(sig, frame)
                return
            # A second signal during the drain (Ctrl-C twice, `systemctl kill` after `stop`):
            # cut now, as the drain's timeout would (503s, counted, one line, 130/143). Not
            # uvicorn's force exit: it skips the app's shutdown and cancels the requests
            # itself, each a bare 500 with a traceback, and the drain then looks clean.
            self._captured_signals.append(sig)  # uvicorn re-raises these once it has stopped
            log.warning("%s during the drain: stopping now", signal.Signals(sig).name)
            try:  # a signal handler runs between two bytecodes of the loop: wake it safely
                asyncio.get_running_loop().call_soon_threadsafe(service.cut, sig)
            except RuntimeError:  # no loop running: nothing in flight to cut
                pass

        async def shutdown(self, sockets=None):
            # Our cut comes before uvicorn's (timeout_graceful_shutdown, below), which would
            # cancel the requests with a traceback each and not say how many it dropped.
            cut = asyncio.get_running_loop().call_later(service.drain_left(), service.cut)
            try:
                accepted, read = await _take_up_queued(sock, self.server_state)
                if accepted or read:
                    log.info("at the stop: %d connection(s) accepted, %d request(s) read before closing", accepted,
                             read)
                await super().shutdown(sockets)
            finally:
                cut.cancel()

    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=http,
            loop=loop,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=config.graceful_timeout_s + UVICORN_BACKSTOP_S,
            timeout_keep_alive=config.keep_alive_timeout_s,
            # Connections beyond the permits would only queue in the kernel; the 429 comes from the
            # permits (max_concurrent_requests), not from refusing sockets.
            backlog=2048,
        )
    )

    def _reload(signum, frame):
        log.info("SIGHUP: reloading %s", service.reloader.path)
        service.reloader.request()

    said: list[int] = []

    def _stopped(signum, frame):
        # uvicorn re-raises each signal that stopped it once it has drained; the drain is over,
        # so the process ends by returning (the caller picks the exit status from run()'s
        # Drained) instead of being killed by the default handler. Said once, after the first.
        if not service.inflight.dropped and not said:  # else Service.stop() said what was dropped
            first = service.drained().signal or signum
            log.info("drained; exiting after %s", signal.Signals(first).name)
        said.append(signum)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGHUP, _reload),
            (signal.SIGTERM, _stopped),
            (signal.SIGINT, _stopped),
        )
    }
    previous[signal.SIGHUP] = original_hup
    if hup_while_starting:
        loaded = service.slot.current.model.root
        if Path(os.path.realpath(service.reloader.path)) == loaded:
            log.info("SIGHUP while starting: %s still names %s, just loaded; no reload needed",
                     service.reloader.path, loaded)
        else:  # DIR was re-pointed after the load began: serve what it names now
            log.info("SIGHUP while starting: %s moved during the load; reloading it",
                     service.reloader.path)
            service.reloader.request()
    try:
        host, port = sock.getsockname()[:2]
        log.info("edge-serve on http://%s:%d (HTTP parser %s, event loop %s)",
                 f"[{host}]" if ":" in host else host, port, http, loop)
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return service.drained()
