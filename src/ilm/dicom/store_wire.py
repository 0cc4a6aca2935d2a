"""C-STORE requests framed ahead of time and written straight to the association's socket.

A C-MOVE or C-GET sends its instances one C-STORE at a time: each request
waits for the answer to the one before. Whatever the sender does between an
answer and the next request is therefore added to every instance. Through
pynetdicom's ``send_c_store`` that is about 2.5 ms of CPU per 512 KB CT
image here: the command set encoded through pydicom (0.4-0.6 ms alone), the
data set cut into PDVs and the PDU encoded (copies of the whole data set),
queued for the DUL thread, which picks it up on its next loop and writes it
with ``socket.send`` in slices. Measured here (100 CT instances to
pynetdicom's storescp, same minutes): pynetdicom's loop 99-109 instances/s,
the same requests framed ahead and written by the sender 134-146/s. PDUs
are at most ``SEND_PDU_BYTES`` long, whatever the peer accepts (see there).

So ilm frames each instance before it is its turn: the read-ahead thread
that reads and hashes an instance (``ilm.readahead``) also cuts its data set
into P-DATA-TF PDUs for the association (``frame_dataset``). When pynetdicom's
C-MOVE/C-GET loop asks to send it, only the command set is encoded
(``command_set``: a C-STORE-RQ in Implicit VR Little Endian, PS3.7 E.1 and
9.3.1.1, byte-identical to pynetdicom's; tests/test_store_wire.py checks
that) and both are written with ``sendall``; the answer is read as
pynetdicom reads it (the DUL thread decodes it onto the DIMSE queue) and
turned into the same status dataset ``send_c_store`` returns.

Writing to the socket from the sending thread bypasses the DUL's queue of
primitives to send. That is safe only on an association that carries
nothing else meanwhile: in an established association a P-DATA request
changes no state of the DUL's state machine (PS3.8 9.2, DT-1), and the
association's own loop is paused for the send as pynetdicom pauses it. So
only a C-MOVE's sub-association is written directly (``direct``). A C-GET
sends its C-STOREs over the requester's association, where pynetdicom
queues a pending C-GET response to the DUL after each one: those PDUs, and
any over TLS (an OpenSSL connection is not written and read from two
threads), are handed to the DUL thread, already framed, in order.
"""

from __future__ import annotations

import ssl
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import P_DATA

from ilm.dicom.store_answer import SendingSocket, read_answer

if TYPE_CHECKING:
    from pynetdicom.association import Association

__all__ = ["Framed", "SEND_PDU_BYTES", "command_set", "frame", "frame_dataset", "send_framed", "send_pdu_length"]

_C_STORE_RQ = 0x0001
_DATA_SET_PRESENT = 0x0001  # CommandDataSetType: anything but 0x0101 (pynetdicom and dcmtk write 0x0001)
# PDV message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment
_DATA, _DATA_LAST, _COMMAND, _COMMAND_LAST = 0x00, 0x02, 0x01, 0x03


# The longest PDU ilm sends, even to a peer that accepts any length (maximum 0) or longer ones:
# dcmtk's own maximum. A receiver reads a PDU whole before it decodes it; pynetdicom (as the
# storescp app) reads it in 4 KB recv() calls and copies it whole several times before it
# decodes it (a 512 KB PDU no longer fits the processor's caches, the likely cost). Measured,
# 100 CT instances of 512 KB moved to pynetdicom's storescp, same minutes: one PDU per instance
# 116 instances/s and 4.65 ms of the receiver's CPU per instance; 256 KiB 133/s, 3.95 ms;
# 128 KiB 136-143/s, 3.45-3.6 ms; 64 KiB 137/s, 3.7 ms; 16 KiB 133/s, 3.9 ms (Orthanc 138-143/s).
SEND_PDU_BYTES = 131072


def send_pdu_length(peer_maximum: int) -> int:
    """The PDU length to send with, given the peer's maximum (0: no limit)."""
    return SEND_PDU_BYTES if peer_maximum == 0 else min(peer_maximum, SEND_PDU_BYTES)


def _element(element: int, value: bytes) -> bytes:
    """One command element of group 0000, Implicit VR Little Endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _ae(title: str) -> bytes:
    raw = title.strip().encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def command_set(msg_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = 2,
                originator_aet: str | None = None, originator_id: int | None = None) -> bytes:
    """The encoded command set of a C-STORE-RQ (PS3.7 9.3.1.1), as pynetdicom encodes it."""
    body = [
        _element(0x0002, _ui(sop_class_uid)),
        _element(0x0100, struct.pack("<H", _C_STORE_RQ)),
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
        _element(0x1000, _ui(sop_instance_uid)),
    ]
    if originator_aet:
        body.append(_element(0x1030, _ae(originator_aet)))
    if originator_id is not None:
        body.append(_element(0x1031, struct.pack("<H", originator_id)))
    rest = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(rest))) + rest


def _fragments(data: bytes | memoryview, max_pdu: int) -> list[memoryview]:
    view = memoryview(data)
    if max_pdu == 0:
        return [view]
    if max_pdu < 7:
        raise ValueError(f"a maximum PDU length of {max_pdu} leaves no room for data")
    step = max_pdu - 6  # a PDV item: 4 bytes length, 1 context ID, 1 control header
    return [view[i:i + step] for i in range(0, max(len(view), 1), step)]


def frame(data: bytes | memoryview, context_id: int, max_pdu: int, command: bool) -> list[bytes | memoryview]:
    """P-DATA-TF PDUs (PS3.8 9.3.5) carrying ``data`` as one command or data set, each
    with one PDV of at most ``max_pdu`` bytes (0: no limit), as header/fragment pieces."""
    more, last = (_COMMAND, _COMMAND_LAST) if command else (_DATA, _DATA_LAST)
    pieces = _fragments(data, max_pdu)
    out: list[bytes | memoryview] = []
    for i, piece in enumerate(pieces):
        control = last if i == len(pieces) - 1 else more
        n = len(piece)
        out.append(struct.pack(">BBIIBB", 0x04, 0x00, n + 6, n + 2, context_id, control))
        out.append(piece)
    return out


@dataclass(frozen=True)
class Framed:
    """One data set cut into the P-DATA-TF PDUs of one association's presentation context."""

    context_id: int
    max_pdu: int
    pdus: bytes


def frame_dataset(dataset: bytes | memoryview, context_id: int, max_pdu: int) -> Framed:
    return Framed(context_id, max_pdu, b"".join(frame(dataset, context_id, max_pdu, command=False)))


def _write(assoc: "Association", command: list[bytes | memoryview], framed: Framed, direct: bool) -> None:
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is None:
        raise ConnectionError("the association has no connection")
    if not direct or isinstance(sock, ssl.SSLSocket):
        # Through the DUL thread, in the order of its queue: an association that also carries
        # other messages (a C-GET's pending responses are queued there) or a TLS socket.
        for pdu in _primitives(b"".join(command), framed):
            assoc.dul.send_pdu(pdu)
        return
    sock.sendall(b"".join(command))
    sock.sendall(framed.pdus)
    assoc.dul._idle_timer.restart()  # what the DUL does when it sends: the association is not idle


def _primitives(command: bytes, framed: Framed) -> list[P_DATA]:
    """The P-DATA primitives of already framed PDUs (each PDU holds one PDV)."""
    out = []
    for blob in (command, framed.pdus):
        view = memoryview(blob)
        pos = 0
        while pos < len(view):
            length = int.from_bytes(view[pos + 6:pos + 10], "big")
            item = view[pos + 10:pos + 10 + length]
            p = P_DATA()
            p.presentation_data_value_list.append((item[0], bytes(item[1:])))
            out.append(p)
            pos += 10 + length
    return out


def send_framed(assoc: "Association", framed: Framed, sop_class_uid: str, sop_instance_uid: str,
                msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                originator_id: int | None = None, *, direct: bool = False) -> Dataset:
    """Send one C-STORE-RQ whose data set is ``framed`` and wait for its answer: the status
    dataset pynetdicom's ``send_c_store`` returns (empty, with the association aborted,
    when no answer came within the DIMSE timeout).

    ``direct``: written to the socket by this thread, and on a ``SendingSocket`` the answer
    read from it by this thread too (ilm.dicom.store_answer). Only for an association that
    carries nothing else while it sends (a C-MOVE's sub-association): otherwise a PDU the DUL
    thread is writing (a C-GET's pending response) could be cut in two. Without it the framed
    PDUs go through the DUL's queue and the answer comes through pynetdicom's DIMSE queue."""
    if not assoc.is_established:
        raise RuntimeError("The association with a peer SCP must be established before sending a C-STORE request")
    command = frame(command_set(msg_id, sop_class_uid, sop_instance_uid, priority, originator_aet, originator_id),
                    framed.context_id, framed.max_pdu, command=True)
    # As pynetdicom's send_c_store: the association's loop pauses, so that the answer is
    # taken off the DIMSE queue here and not served as a request.
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        wrapper = assoc.dul.socket
        pdus_before = wrapper._ilm_pdus if isinstance(wrapper, SendingSocket) else 0
        _write(assoc, command, framed, direct)
        got, answer = (read_answer(assoc, framed.context_id, msg_id, pdus_before, assoc.dimse_timeout)
                       if direct else (False, None))
        if got:
            if answer is not None:
                return answer
            rsp = None  # nothing came within the DIMSE timeout
        else:
            _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(rsp)
    return status
