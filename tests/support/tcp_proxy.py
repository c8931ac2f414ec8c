"""A TCP proxy on loopback that a test can cut and restore: a network outage on demand."""

from __future__ import annotations

import selectors
import socket
import threading
import time


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new.

    One daemon thread accepts, one daemon thread per connection pumps both directions with a
    selector, so only that thread ever touches its sockets; each loop wakes every 0.2 s to
    notice a cut or a close, which bounds both.
    """

    TICK = 0.2

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(self.TICK)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._epoch = 0  # a connection opened in an older epoch than the current one is cut
        self._cut = False
        self._closed = threading.Event()
        self._threads: set[threading.Thread] = set()
        self.refused = 0
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )

    def start(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def cut(self, timeout: float = 5.0) -> None:
        """Close every open connection (bounded wait) and refuse new ones until ``restore()``."""
        with self._lock:
            self._cut = True
            self._epoch += 1
            threads = set(self._threads)
        self._join(threads, timeout)

    def restore(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self._cut = False

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection; returns within about ``timeout`` s."""
        self._closed.set()
        with self._lock:
            self._epoch += 1
            threads = {*self._threads, self._acceptor}
        self._join(threads, timeout)
        self._listener.close()

    @staticmethod
    def _join(threads: set[threading.Thread], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"proxy threads did not stop: {alive}"

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed.is_set():
                    # Refused: the client sees the connection closed before the server spoke.
                    self.refused += 1
                    client.close()
                    continue
                epoch = self._epoch
                thread = threading.Thread(
                    target=self._serve, args=(client, epoch), name="proxy-conn", daemon=True
                )
                self._threads.add(thread)
            thread.start()

    def _serve(self, client: socket.socket, epoch: int) -> None:
        try:
            with client, socket.create_connection(self._target, timeout=5) as upstream:
                client.settimeout(5)
                upstream.settimeout(5)
                peers = {client: upstream, upstream: client}
                with selectors.DefaultSelector() as selector:
                    for sock in peers:
                        selector.register(sock, selectors.EVENT_READ)
                    while self._epoch == epoch:
                        for key, _ in selector.select(self.TICK):
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            peers[key.fileobj].sendall(data)  # type: ignore[index]
        except OSError:
            pass  # either side went away: the connection ends here, as it would on a network
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
