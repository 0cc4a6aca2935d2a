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
every millisecond) and makes the DUL loop wait on its socket and on a wake-up
signal the association thread gives when it queues something to send (an
answer): it wakes the moment either comes, instead of polling every
``DUL_IDLE_SECONDS`` (5,000 wake-ups a second per association, each taking the
GIL from the thread storing the instance). Release, abort and timers are still
looked at every ``_LOOK_SECONDS``.

It also makes the connection acknowledge what it receives at once (Linux
TCP_QUICKACK, re-armed after every read, as the kernel drops back to delayed
acknowledgements on its own) and send its answers without Nagle's delay
(TCP_NODELAY). A sender that writes an instance as several PDUs holds the last,
short one back until the previous ones are acknowledged (Nagle's algorithm,
dcmtk's storescu does); a receiver that delays that acknowledgement (40 ms on
Linux) stalls the instance for 40 ms. Measured with storescu sending 1,000 CT
instances: 5 to 117 such stalls per run, up to half the run's time.
The same read takes the PDU into one buffer (recv_into) instead of 4 KB pieces.

The success answer to a C-STORE (its command set: seven fixed elements) is
encoded here directly, the same bytes pynetdicom would send
(``store_success_command``); pynetdicom builds a pydicom Dataset for it and
encodes that, 0.25-0.4 ms per instance. Any other message, and any answer
while a handler watches EVT_DIMSE_SENT, goes through pynetdicom.
The loop below is pynetdicom 3.0's ``Association._run_reactor`` with that one
change; everything else (pausing for requests the acceptor sends itself, as a
C-GET does) works as in pynetdicom.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

if TYPE_CHECKING:
    from pynetdicom.events import Event

__all__ = ["prompt_association", "ended", "store_success_command", "DUL_IDLE_SECONDS"]

log = logging.getLogger(__name__)

# The DUL loop's sleep when a pass found nothing and it cannot wait on its socket (pynetdicom: 1 ms):
# TLS data already decrypted and buffered, or no socket.
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


class _PromptDUL(DULServiceProvider):
    """pynetdicom's DUL whose idle wait is a select() on its socket and its wake-up pair."""

    _wake: tuple[socket.socket, socket.socket] | None = None

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        wake = self._wake
        if wake is not None:
            # OSError: full (a wake-up is pending anyway) or closed (the loop ended)
            with contextlib.suppress(OSError):
                wake[1].send(b"\0")

    def _idle(self) -> None:
        """Wait for data from the peer, something to send, or ``_LOOK_SECONDS``."""
        wrapper, wake = self.socket, self._wake
        sock = wrapper.socket if wrapper is not None else None
        if sock is None or wake is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            time.sleep(self._run_loop_delay)
            return
        if not self.to_provider_queue.empty():
            return
        try:
            ready, _, _ = select.select([sock, wake[0]], [], [], _LOOK_SECONDS)
        except (OSError, ValueError):  # the socket closed under us: the next pass sees it
            time.sleep(self._run_loop_delay)
            return
        if wake[0] in ready:
            with contextlib.suppress(OSError):  # raised once drained (would block)
                while wake[0].recv(4096):
                    continue

    def run(self) -> None:
        """The thread's body: this class's loop (the thread's target was bound to pynetdicom's
        when the DUL was made, before it became a _PromptDUL). ilm leaves pynetdicom's
        PASS_CONTEXTVARS off, so the target had no context to carry."""
        self.run_reactor()

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with ``_idle()`` for its sleep."""
        try:
            self._run()
        finally:
            wake, self._wake = self._wake, None
            for end in wake or ():
                end.close()

    def _run(self) -> None:
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._idle()
            if self._kill_thread:
                break
            if self.artim_timer.expired:  # its event goes ahead of any other of this pass
                self.event_queue.put("Evt18")
            try:  # either send one primitive or receive one PDU per pass
                if not self._process_recv_primitive() and self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()  # past the state machine: it cannot be trusted now
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


def _ui(tag_elem: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"  # UI values are padded to an even length with NUL
    return struct.pack("<HHI", 0x0000, tag_elem, len(value)) + value


def store_success_command(primitive: Any) -> bytes | None:
    """The encoded command set (implicit VR little endian, as PS3.7 requires) of a C-STORE
    response with status Success and nothing else to say; None for any other message."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None or primitive.Status != 0
            or primitive.ErrorComment is not None or primitive.OffendingElement is not None
            or not primitive.AffectedSOPClassUID or not primitive.AffectedSOPInstanceUID):
        return None
    try:
        sop_class, sop_instance = (_ui(0x0002, str(primitive.AffectedSOPClassUID)),
                                   _ui(0x1000, str(primitive.AffectedSOPInstanceUID)))
    except UnicodeEncodeError:  # not a UID pynetdicom would have let through; let it deal with it
        return None
    body = b"".join((
        sop_class,
        struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x8001),  # Command Field: C-STORE-RSP
        struct.pack("<HHIH", 0x0000, 0x0120, 2, primitive.MessageIDBeingRespondedTo),
        struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101),  # Command Data Set Type: no data set
        struct.pack("<HHIH", 0x0000, 0x0900, 2, 0x0000),  # Status: Success
        sop_instance,
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body  # Command Group Length first


class _PromptDIMSE(DIMSEServiceProvider):
    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_success_command(primitive)
        limit = self.maximum_pdu_size
        if (command is None or (limit and len(command) + 6 > limit)
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
        self.dul.send_pdu(pdata)


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
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


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
        if type(assoc.dimse) is DIMSEServiceProvider:
            assoc.dimse.__class__ = _PromptDIMSE
        dul = assoc.dul
        dul._run_loop_delay = DUL_IDLE_SECONDS
        if type(dul) is DULServiceProvider:
            dul.__class__ = _PromptDUL
            wake = socket.socketpair()
            for end in wake:
                end.setblocking(False)
            cast(_PromptDUL, dul)._wake = wake
        sock = dul.socket
        if type(sock) is AssociationSocket and sock.socket is not None:
            sock.__class__ = _PromptSocket
            with contextlib.suppress(OSError):
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _quickack(sock.socket)
