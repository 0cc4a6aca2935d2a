"""Associations that answer promptly: pynetdicom's reactor loops, without their fixed 1 ms waits.

pynetdicom runs two loops per association. The association's loop sleeps 1 ms
before each look at its queue of received DIMSE messages; the DUL's loop
(socket and state machine) sleeps ``_run_loop_delay`` (1 ms) whenever a pass
found nothing to do. A C-STORE sender waits for each answer before it sends the
next instance, so these waits add up on every instance: the message, complete,
waits for the association loop's next look, the answer waits for the DUL
loop's, and so does the next instance's first PDU.

``prompt_association`` (bound to EVT_CONN_OPEN, before the association's
threads start) makes the association loop wait ON its message queue (it wakes
the moment a message is queued, and still looks at release, abort and timeouts
every millisecond) and shortens the DUL's idle sleep to ``DUL_IDLE_SECONDS``.

It also makes the connection acknowledge what it receives at once (Linux
TCP_QUICKACK, re-armed after every read, as the kernel drops back to delayed
acknowledgements on its own) and send its answers without Nagle's delay
(TCP_NODELAY). A sender that writes an instance as several PDUs holds the last,
short one back until the previous ones are acknowledged (Nagle's algorithm,
dcmtk's storescu does); a receiver that delays that acknowledgement (40 ms on
Linux) stalls the instance for 40 ms. Measured with storescu sending 1,000 CT
instances: 5 to 117 such stalls per run, up to half the run's time.
The same read takes the PDU into one buffer (recv_into) instead of 4 KB pieces.
The loop below is pynetdicom 3.0's ``Association._run_reactor`` with that one
change; everything else (pausing for requests the acceptor sends itself, as a
C-GET does) works as in pynetdicom.
"""

from __future__ import annotations

import logging
import queue
import socket
from typing import TYPE_CHECKING, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

if TYPE_CHECKING:
    from pynetdicom.events import Event

__all__ = ["prompt_association", "ended", "DUL_IDLE_SECONDS"]

log = logging.getLogger(__name__)

# The DUL loop's sleep when a pass found nothing (pynetdicom: 1 ms). Shorter answers sooner
# and costs a little CPU while an association is open and idle.
DUL_IDLE_SECONDS = 0.0002
_LOOK_SECONDS = 0.001  # release, abort and timeouts are still checked this often


class _PromptAssociation(Association):
    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # Paused while the acceptor itself sends requests and waits for their answers.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_LOOK_SECONDS)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if ended(self):
                return


def ended(assoc: Association) -> bool:
    """What pynetdicom's association loop does after each look at its queue: answer a
    release the peer asked for, and end on an abort, a stopped DUL or the network timeout.
    True when the association has ended (the loop then returns)."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True
    if assoc.acse.is_aborted():
        assoc.is_aborted = True  # before the abort leaves the queue: a sender looks at one or the other
        assoc.is_established = False
        assoc.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for the abort
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return True
    if not assoc.dul.is_alive():
        assoc.kill()
        return True
    if assoc.dul.idle_timer_expired():
        log.error("Network timeout reached")
        if assoc.network_timeout_response == "A-RELEASE":
            paused = assoc._is_paused
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = paused
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _quickack(sock: socket.socket) -> None:
    """Acknowledge what has arrived now, and the next segments at once too (Linux)."""
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


class _PromptSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` read from the socket (fewer when the connection closes first), each part
        acknowledged at once. Blocking, like pynetdicom's."""
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                _quickack(sock)
                if not n:
                    break
                got += n
        if got < nr_bytes:
            del buf[got:]
        return buf


def prompt_association(event: "Event") -> None:
    """EVT_CONN_OPEN: make the new association one that answers promptly (see the module)."""
    assoc = event.assoc
    if type(assoc) is Association and assoc.is_acceptor:
        assoc.__class__ = _PromptAssociation
        assoc.dul._run_loop_delay = DUL_IDLE_SECONDS
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket and sock.socket is not None:
            sock.__class__ = _PromptSocket
            try:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            _quickack(sock.socket)
