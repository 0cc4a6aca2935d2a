"""The C-MOVE sub-association's socket: the DUL thread waits on it, the sender reads its answers.

pynetdicom's DUL thread reads every PDU that arrives, decodes it, runs it
through the state machine and the DIMSE layer (the command set decoded into
a pydicom Dataset, then into a primitive) and queues it for the thread that
waits for the answer. For a C-STORE answer that is 0.3-0.35 ms from the
answer's arrival on the socket to the sending thread having it (measured
here, per instance), on the path of every sub-operation of a C-MOVE.

``SendingSocket`` replaces the sub-association's ``AssociationSocket``:

- its ``ready`` (asked by the DUL loop on each pass) waits up to
  ``LOOK_SECONDS`` in select() for data instead of answering at once, so
  the DUL thread sleeps until something arrives rather than polling every
  0.2 ms;
- while the sending thread waits for the answer to its C-STORE request it
  reads the socket itself (``read_answer``): a P-DATA-TF holding the whole
  C-STORE-RSP command set for that request (``parse_answer``, checked
  against pynetdicom's decoding in tests/test_store_answer.py) becomes the
  status dataset ``send_c_store`` would return. Any other PDU (an abort, a
  release request, an answer split over several PDUs, anything unexpected)
  is handed to the DUL exactly as its own read would (decoded, its event
  queued), and the sender goes back to waiting on the DIMSE queue: the
  DUL's handling of it is pynetdicom's.

The two threads never read at the same time: the DUL takes a lock in
``ready`` (or, for a read begun before ``install``, in ``recv``) and keeps it
until it has read the whole PDU; the sender announces that it wants to read
(the DUL then stops taking the lock in ``ready``), takes it, and falls back
to the DIMSE queue if the DUL read any PDU since the request was written. Not over TLS: an OpenSSL
connection is not read by one thread while another writes it.
"""

from __future__ import annotations

import select
import ssl
import struct
import threading
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.transport import AssociationSocket

if TYPE_CHECKING:
    from pynetdicom.association import Association

__all__ = ["LOOK_SECONDS", "SendingSocket", "parse_answer", "read_answer"]

LOOK_SECONDS = 0.001  # how long one select() of the DUL loop waits; release and timers are seen this often
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_COMMAND_LAST = 0x03
_C_STORE_RSP = 0x8001


class SendingSocket(AssociationSocket):
    """See the module. ``install`` turns a connected ``AssociationSocket`` into one."""

    _ilm_reads: threading.Lock     # held by whoever reads the socket
    _ilm_free: threading.Event     # cleared while the sending thread wants to read
    _ilm_step: int                 # the DUL's read under way: 0 none, 1 header next, 2 body next
    _ilm_pdus: int                 # PDUs the DUL has read

    @classmethod
    def install(cls, wrapper: AssociationSocket) -> None:
        wrapper._ilm_reads = threading.Lock()  # type: ignore[attr-defined]
        wrapper._ilm_free = threading.Event()  # type: ignore[attr-defined]
        wrapper._ilm_free.set()  # type: ignore[attr-defined]
        wrapper._ilm_step = 0  # type: ignore[attr-defined]
        wrapper._ilm_pdus = 0  # type: ignore[attr-defined]
        wrapper.__class__ = cls

    @property
    def ready(self) -> bool:
        """The DUL loop: whether a PDU can be read now (then the read lock stays taken until it is)."""
        if not self._ilm_free.is_set():  # the sending thread reads the answer itself
            self._ilm_free.wait(LOOK_SECONDS)
            return False
        if not self._ilm_reads.acquire(timeout=LOOK_SECONDS):
            return False
        keep = False
        try:
            sock = self.socket
            if sock is None or self._is_connected is False:
                return False
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                keep = True
                return True
            try:
                ready, _, _ = select.select([sock], [], [], LOOK_SECONDS)
            except (OSError, TimeoutError, ValueError):
                self.event_queue.put("Evt17")  # the transport connection closed
                return False
            keep = bool(ready)
            return keep
        finally:
            if keep:
                self._ilm_step = 1
            else:
                self._ilm_reads.release()

    def recv(self, nr_bytes: int) -> bytearray:
        """The DUL's reads of one PDU (header, then body); the read lock is let go after the last.

        A read that did not come through this class's ``ready`` (a pass of the DUL loop that
        had asked pynetdicom's own ``ready`` just before ``install``, and found the answer there
        once the thread ran again) takes the lock here first: the sender is never reading then."""
        step = self._ilm_step
        if step == 0:
            self._ilm_reads.acquire()
            step = self._ilm_step = 1
        last = True
        try:
            data = super().recv(nr_bytes)
            if step == 1 and len(data) == 6 and data[0] in _PDU_TYPES:
                last = False  # pynetdicom reads the body next (a PDU length is never 0)
            return data
        finally:
            if last:
                self._ilm_step = 0
                self._ilm_pdus += 1
                self._ilm_reads.release()
            else:
                self._ilm_step = 2


def parse_answer(pdu: bytes, context_id: int, msg_id: int) -> Dataset | None:
    """The status dataset of a C-STORE-RSP to ``msg_id`` carried whole by this P-DATA-TF PDU
    (one PDV: the last command fragment, on ``context_id``), as pynetdicom's ``send_c_store``
    returns it (Status, and OffendingElement / ErrorComment when present); None for any other PDU."""
    if len(pdu) < 12 or pdu[0] != _P_DATA_TF:
        return None
    (length,) = struct.unpack_from(">I", pdu, 6)
    if 10 + length != len(pdu) or pdu[10] != context_id or pdu[11] != _COMMAND_LAST:
        return None  # more than one PDV, another context, or not a whole command set
    values: dict[int, bytes] = {}
    pos, end = 12, len(pdu)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, size = struct.unpack_from("<HHI", pdu, pos)
        pos += 8
        if group != 0x0000 or pos + size > end:
            return None
        values[element] = pdu[pos:pos + size]
        pos += size
    try:
        field = struct.unpack("<H", values[0x0100])[0]
        responded_to = struct.unpack("<H", values[0x0120])[0]
        status_value = struct.unpack("<H", values[0x0900])[0]
    except (KeyError, struct.error):
        return None
    if field != _C_STORE_RSP or responded_to != msg_id:
        return None
    status = Dataset()
    status.Status = status_value
    offending = values.get(0x0901)
    if offending:
        if len(offending) % 4:
            return None
        tags = [Tag(*struct.unpack_from("<HH", offending, i)) for i in range(0, len(offending), 4)]
        status.OffendingElement = tags if len(tags) > 1 else tags[0]
    comment = values.get(0x0902)
    if comment:
        status.ErrorComment = comment.decode("ascii", "replace").rstrip(" \x00")
    return status


def _recv_exact(sock: Any, n: int) -> bytes:
    chunks = []
    while n:
        data = sock.recv(min(n, 1 << 20))
        if not data:
            break
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _hand_to_dul(assoc: "Association", blob: bytes, short: bool) -> None:
    """What pynetdicom's DUL does with a PDU it has read (``_read_pdu_data``)."""
    dul = assoc.dul
    if short:
        dul.event_queue.put("Evt17")  # the connection closed before the whole PDU came
        return
    if blob[0] not in _PDU_TYPES:
        dul.event_queue.put("Evt19")
        return
    try:
        pdu, event = dul._decode_pdu(bytearray(blob))
    except Exception:  # as pynetdicom: an undecodable PDU is Evt19
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def read_answer(assoc: "Association", context_id: int, msg_id: int, pdus_before: int,
                timeout: float | None) -> tuple[bool, Dataset | None]:
    """On a ``SendingSocket``, read the answer to request ``msg_id`` from the socket.

    (True, status) when it came as expected; (True, None) when nothing came within
    ``timeout``; (False, None) when the answer is to be taken from the DIMSE queue instead
    (the DUL read a PDU since the request was written, or what came was not the answer,
    which the DUL then handles)."""
    wrapper = assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    if not isinstance(wrapper, SendingSocket) or sock is None or isinstance(sock, ssl.SSLSocket):
        return False, None
    wrapper._ilm_free.clear()
    try:
        if not wrapper._ilm_reads.acquire(timeout=-1 if timeout is None else timeout):
            return True, None
        try:
            if wrapper._ilm_pdus != pdus_before:
                return False, None
            try:
                ready, _, _ = select.select([sock], [], [], timeout)
            except (OSError, ValueError):
                return False, None  # closed: the DUL sees it on its next look
            if not ready:
                return True, None
            header = _recv_exact(sock, 6)
            if len(header) < 6:
                _hand_to_dul(assoc, header, short=True)
                return False, None
            (length,) = struct.unpack_from(">I", header, 2)
            body = _recv_exact(sock, length) if header[0] in _PDU_TYPES else b""
            blob = header + body
            assoc.dul._idle_timer.restart()
            status = parse_answer(blob, context_id, msg_id)
            if status is not None:
                return True, status
            _hand_to_dul(assoc, blob, short=header[0] in _PDU_TYPES and len(body) < length)
            return False, None
        finally:
            wrapper._ilm_reads.release()
    finally:
        wrapper._ilm_free.set()
