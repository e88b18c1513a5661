# SPDX-License-Identifier: BSD-3-Clause
"""The unix-socket edge: framed messages with SCM_RIGHTS fds, both ways.

One `Channel` per connection.  Receiving goes straight into the framing
buffer with recvmsg_into (no copy, fds collected with the bytes); sending
puts header, payload and fds in one sendmsg: `send` waits (up to the send
timeout) until all is taken, `send_some` takes what a non-blocking socket
takes now (the server's edge, which never waits).
"""
from __future__ import annotations

import array
import errno
import os
import socket

from vfu_platform.protocol.constants import SCM_MAX_FD, SEND_TIMEOUT
from vfu_platform.protocol.framing import Frame, ReceiveBuffer

_FD_SIZE = array.array("i").itemsize
# Room for as many fds as Linux can pass in one message: a peer sending more than
# it may (max_msg_fds) then gets a clear EINVAL instead of a truncated control message.
_ANCILLARY_SPACE = socket.CMSG_SPACE(SCM_MAX_FD * _FD_SIZE)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: IntFlag arithmetic is slow
_NO_FDS: list[int] = []


class ConnectionClosed(Exception):
    """The peer went away (EOF or reset)."""


class Channel:
    def __init__(self, sock: socket.socket, max_message_size: int = 0, send_timeout: float | None = SEND_TIMEOUT,
                 buffer: ReceiveBuffer | None = None) -> None:
        """Receive into `buffer` (a session's), or into a new one for messages up to `max_message_size`."""
        self.sock = sock
        # Only send() can wait: receive() is called when the socket is readable.
        sock.settimeout(send_timeout)
        if buffer is None:
            if max_message_size <= 0:
                raise ValueError("a Channel needs a buffer or a max_message_size")
            buffer = ReceiveBuffer(max_message_size)
        self.buffer = buffer
        #: set when a recvmsg lost ancillary data (MSG_CTRUNC): the next message is answered EFAULT
        self.truncated_fds = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> int:
        """One recvmsg_into; returns the number of bytes received.  Raises ConnectionClosed at EOF."""
        view = self.buffer.writable()
        try:
            nbytes, ancdata, msg_flags, _ = self.sock.recvmsg_into([view], _ANCILLARY_SPACE)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        finally:
            view.release()
        fds = _collect_fds(ancdata) if ancdata else _NO_FDS
        if msg_flags & _MSG_CTRUNC:
            self.truncated_fds = True
        if nbytes == 0:
            for fd in fds:
                os.close(fd)
            raise ConnectionClosed("end of stream")
        self.buffer.commit(nbytes, fds)
        return nbytes

    def next_frame(self) -> Frame | None:
        return self.buffer.next_message()

    def send(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send one whole message; fds travel with its first byte."""
        try:
            if fds:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        except TimeoutError as exc:
            raise ConnectionClosed(f"the peer did not take a message within {self.sock.gettimeout()} s") from exc
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise ConnectionClosed(str(exc)) from exc
            raise

    def send_some(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> int:
        """One send on a non-blocking socket: the bytes taken (0: the buffer is full; fds go with byte 0)."""
        try:
            if fds:
                return self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise ConnectionClosed(str(exc)) from exc
            raise

    def send_nowait(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Send one message if the socket takes all of it at once; False if not (or the peer is gone).

        For last words before closing: a client that is not reading is not waited for.
        """
        try:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            sent = self.sock.sendmsg([data], ancillary, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return sent == len(data)

    def close(self) -> None:
        self.buffer.discard()
        self.sock.close()


def _collect_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds
