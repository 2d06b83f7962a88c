"""A TCP proxy on loopback that a scenario can slow down or take away: how `whaleid chaos` makes S3 slow or
unavailable for the chain's services without touching the S3 server (whose in-memory data a restart would lose).

    proxy = FaultProxy(target_host, target_port).start()   # services use 127.0.0.1:proxy.port
    proxy.set_delay(0.5)    # every chunk waits 0.5 s in each direction (a slow server)
    proxy.set_down(True)    # new connections are refused (closed at once) and open ones are cut
    proxy.set_full(True)    # a full volume: open connections are cut, and each new request that writes (PUT,
                            # POST) is answered 507 InsufficientStorage (S3's XML error) without reaching S3
    proxy.set_down(False); proxy.set_delay(0.0); proxy.set_full(False)
"""

from __future__ import annotations

import socket
import threading
import time

from services.devtools.stack.ports import LOOPBACK

CHUNK = 65536
WRITES = (b"PUT ", b"POST ")
FULL_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InsufficientStorage</Code><Message>the volume '
             b'is full: no space left to store the object</Message></Error>')
FULL_ANSWER = (b"HTTP/1.1 507 Insufficient Storage\r\nContent-Type: application/xml\r\nConnection: close\r\n"
               b"Content-Length: " + str(len(FULL_BODY)).encode() + b"\r\n\r\n" + FULL_BODY)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0):
        self.target = (target_host, int(target_port))
        self._listener = socket.create_server((LOOPBACK, listen_port))
        self.port = self._listener.getsockname()[1]
        self._delay_s = 0.0
        self._down = False
        self._full = False
        self.refused_writes = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> "FaultProxy":
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()
        return self

    def set_delay(self, seconds: float) -> None:
        self._delay_s = max(0.0, float(seconds))

    def set_down(self, down: bool) -> None:
        self._down = bool(down)
        if down:
            with self._lock:
                sockets, self._open = list(self._open), set()
            for sock in sockets:
                _close(sock)

    def set_full(self, full: bool) -> None:
        self._full = bool(full)
        if full:  # a kept-alive connection would carry the next write unseen
            with self._lock:
                sockets, self._open = list(self._open), set()
            for sock in sockets:
                _close(sock)

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.set_down(True)

    # --- internals
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = b""
        if self._full:
            try:
                client.settimeout(10)
                first = client.recv(CHUNK)
                client.settimeout(None)
            except OSError:
                _close(client)
                return
            if first.startswith(WRITES):
                self.refused_writes += 1
                try:
                    _read_request(client, first)  # as a server does, so the caller reads the answer, not a reset
                    client.sendall(FULL_ANSWER)
                except OSError:
                    pass
                finally:
                    _close(client)
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        if first:
            try:
                upstream.sendall(first)
            except OSError:
                _close(client)
                _close(upstream)
                return
        with self._lock:
            self._open.update((client, upstream))
            self.connections += 1
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                if self._delay_s:
                    time.sleep(self._delay_s)
                if self._down:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                _close(sock)


def _read_request(client: socket.socket, data: bytes) -> None:
    """Read the rest of one request (its head, then Content-Length bytes of body) within 10 s."""
    client.settimeout(10)
    while b"\r\n\r\n" not in data:
        chunk = client.recv(CHUNK)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    while len(body) < length:
        chunk = client.recv(CHUNK)
        if not chunk:
            return
        body += chunk


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
