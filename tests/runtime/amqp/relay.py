"""A TCP relay between a client and the broker that can go silent in two ways while the connection
stays open and healthy to both ends:

- ``mute()``: the connections open now stop passing any of the broker's frames to the client (the
  client's frames still reach the broker); ``unmute()`` lets the held frames through;
- ``swallow_deliveries()``: the connections open now drop every ``basic.deliver`` (with its content
  header and body frames) the broker sends; everything else passes — heartbeats, confirms, answers to
  ``queue.declare``. The broker counts those messages as delivered and unacknowledged (they fill the
  consumer's prefetch window); the client never sees them: a consumer that is registered and answered
  but to which nothing arrives.

Connections made later are neither muted nor swallowed."""

from __future__ import annotations

import socket
import struct
import threading
import time

_METHOD = 1
_BASIC_DELIVER = (60, 60)


class Relay:
    """127.0.0.1:port → the broker on ``target_port``."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.muted: set[int] = set()     # ids of muted connections
        self.swallowing: set[int] = set()  # ids of connections whose deliveries are dropped
        self.swallowed = 0               # basic.deliver frames dropped so far
        self.open: list[int] = []        # ids of the connections made so far
        self.socks: list[socket.socket] = []
        self.stopping = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            u = socket.create_connection(("127.0.0.1", self.target))
            self.accepted += 1
            cid = self.accepted
            self.open.append(cid)
            self.socks += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, cid), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, cid: int | None) -> None:
        """``a`` → ``b``; ``cid`` is set on the broker → client direction (the one muted or filtered)."""
        a.settimeout(0.1)
        pending = b""             # broker → client bytes not yet forwarded (a frame cut by a read)
        dropping: set[int] = set()  # channels whose current content belongs to a swallowed delivery
        try:
            while not self.stopping.is_set():
                if cid is not None and cid in self.muted:
                    time.sleep(0.05)  # the broker's frames wait (in the kernel's buffers)
                    continue
                try:
                    data = a.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if cid is None:
                    b.sendall(data)
                    continue
                while cid in self.muted and not self.stopping.is_set():
                    time.sleep(0.05)  # read just as mute() was called: held too
                pending += data
                out, pending = self._frames(pending, dropping, cid in self.swallowing)
                if out:
                    b.sendall(out)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _frames(self, buf: bytes, dropping: set[int], swallow: bool) -> tuple[bytes, bytes]:
        """The whole frames of ``buf`` to forward (without a swallowed delivery's), and the rest."""
        out = []
        i = 0
        while len(buf) - i >= 7:
            kind, channel, size = struct.unpack_from(">BHI", buf, i)
            end = i + 7 + size + 1  # header, payload, frame-end octet
            if end > len(buf):
                break
            frame = buf[i:end]
            i = end
            if kind == _METHOD:
                dropping.discard(channel)
                if swallow and struct.unpack_from(">HH", frame, 7) == _BASIC_DELIVER:
                    dropping.add(channel)  # its content header and body frames follow on this channel
                    self.swallowed += 1
                    continue
            elif channel in dropping and kind in (2, 3):
                continue
            out.append(frame)
        return b"".join(out), buf[i:]

    def mute(self) -> None:
        self.muted.update(self.open)

    def unmute(self) -> None:
        self.muted.clear()

    def swallow_deliveries(self) -> None:
        self.swallowing.update(self.open)

    def close(self) -> None:
        self.stopping.set()
        self.srv.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
