"""ilm.dicom.store_answer: the C-MOVE sender reads its C-STORE answers itself.

``parse_answer`` against answers pynetdicom encodes (every status shape a
storage SCP sends), and None for everything that is not the whole answer to
the request. Then real associations to pynetdicom's storage SCP on loopback:
answers read by the sending thread, failures with their comment, and a
destination that aborts mid-way (the abort goes to pynetdicom's DUL and the
association ends as pynetdicom ends it).
"""

from __future__ import annotations

import time
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from ilm.dicom import store_answer
from ilm.dicom.sending import sending_association
from ilm.dicom.store_answer import SendingSocket, parse_answer
from ilm.dicom.store_wire import frame_dataset, send_framed

CT = "1.2.840.10008.5.1.4.1.1.2"


def _pdus(msg: Any, ctx: int, max_pdu: int = 0) -> list[bytes]:
    out = []
    for p in msg.encode_msg(ctx, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out.append(pdu.encode())
    return out


def _store_rsp(msg_id: int, status: int, comment: str | None = None, offending: list[int] | None = None,
               ctx: int = 3, max_pdu: int = 0) -> list[bytes]:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5"
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    if offending is not None:
        rsp.OffendingElement = offending
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return _pdus(msg, ctx, max_pdu)


@pytest.mark.parametrize("status,comment,offending", [
    (0x0000, None, None),
    (0xB000, "Coercion of data elements", None),
    (0xA700, "Out of resources: disk full", None),
    (0xC000, "Cannot understand", [0x00100010]),
    (0xA900, "odd", [0x00100010, 0x00100020]),
], ids=["success", "warning", "out-of-resources", "one-offending", "two-offending"])
def test_answers_read_as_pynetdicom_returns_them(status: int, comment: str | None, offending: list[int] | None) -> None:
    [pdu] = _store_rsp(7, status, comment, offending)
    got = parse_answer(pdu, 3, 7)
    assert got is not None
    assert got.Status == status
    assert got.get("ErrorComment") == comment
    if offending is None:
        assert "OffendingElement" not in got
    else:
        value = got.OffendingElement
        seq = list(value) if isinstance(value, (list, MultiValue)) else [value]
        assert [Tag(t) for t in seq] == [Tag(t) for t in offending]


def test_what_is_not_the_whole_answer_is_left_to_pynetdicom() -> None:
    [pdu] = _store_rsp(7, 0x0000)
    assert parse_answer(pdu, 3, 8) is None                  # the answer to another request
    assert parse_answer(pdu, 5, 7) is None                  # another presentation context
    assert parse_answer(pdu[:-3], 3, 7) is None             # cut short
    assert parse_answer(pdu + pdu[6:], 3, 7) is None        # more than the PDU says
    split = _store_rsp(7, 0x0000, "a comment long enough to need two PDUs", max_pdu=64)
    assert len(split) > 1 and all(parse_answer(p, 3, 7) is None for p in split)
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 7
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    msg = C_ECHO_RSP()
    msg.primitive_to_message(echo)
    [echo_pdu] = _pdus(msg, 3)
    assert parse_answer(echo_pdu, 3, 7) is None             # not a C-STORE-RSP
    assert parse_answer(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00", 3, 7) is None  # an A-ABORT


def _instance(n: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = f"P{n}"
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 300
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dataset_part(blob: bytes) -> bytes:
    fp = BytesIO(blob)
    read_preamble(fp, False)
    read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    return blob[fp.tell():]


def _sender(port: int) -> Any:
    """A C-MOVE-like sub-association: established, then made a sending one by ilm."""
    scu = AE(ae_title="ILM")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", port, ae_title="DEST", max_pdu=0,
                          evt_handlers=[(evt.EVT_ESTABLISHED, sending_association)])
    assert assoc.is_established
    assert isinstance(assoc.dul.socket, SendingSocket)
    return assoc


@pytest.fixture
def dest() -> Any:
    """pynetdicom's storage SCP on loopback; each instance's answer decided by ``answers``."""
    received: dict[str, bytes] = {}
    answers: list[Any] = []

    def on_store(event: evt.Event) -> Any:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        answer = answers.pop(0) if answers else 0x0000
        if answer == "abort":
            event.assoc.abort()
            return 0xA700
        return answer

    scp = AE(ae_title="DEST")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.socket.getsockname()[1], received, answers  # type: ignore[union-attr]
    finally:
        server.shutdown()


def _send(assoc: Any, blob: bytes, msg_id: int) -> Dataset:
    ctx = assoc.accepted_contexts[0]
    framed = frame_dataset(_dataset_part(blob), int(ctx.context_id or 0), 131072)
    sop_uid = str(dcmread(BytesIO(blob)).SOPInstanceUID)
    return send_framed(assoc, framed, CT, sop_uid, msg_id=msg_id, originator_aet="MOVESCU", originator_id=1,
                       direct=True)


def test_answers_are_read_by_the_sending_thread(dest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    port, received, answers = dest
    reads: list[tuple[bool, Any]] = []
    plain = store_answer.read_answer

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = plain(*args, **kwargs)
        reads.append(out)
        return out

    monkeypatch.setattr("ilm.dicom.store_wire.read_answer", spy)
    answers.extend([0x0000, 0xA700, 0xB000])
    assoc = _sender(port)
    blobs = [_instance(n) for n in range(3)]
    try:
        statuses = [_send(assoc, b, n + 1) for n, b in enumerate(blobs)]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [0x0000, 0xA700, 0xB000]
    assert len(reads) == 3 and all(got and status is not None for got, status in reads)
    assert sorted(received.values()) == sorted(_dataset_part(b) for b in blobs)


def test_a_failure_comes_back_with_its_comment(dest: Any) -> None:
    port, _, answers = dest
    st = Dataset()
    st.Status = 0xA700
    st.ErrorComment = "Out of disk space"
    answers.append(st)
    assoc = _sender(port)
    try:
        status = _send(assoc, _instance(0), 1)
    finally:
        assoc.release()
    assert status.Status == 0xA700
    assert status.ErrorComment == "Out of disk space"


def test_a_destination_that_aborts_ends_the_association_as_pynetdicom_does(
        dest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abort arrives while the sender waits for its answer: the sender reads it, hands it to
    pynetdicom's DUL, and the association ends aborted; the send returns the empty status
    pynetdicom's send_c_store returns then."""
    port, _, answers = dest
    handed: list[int] = []
    plain = store_answer._hand_to_dul

    def spy(assoc: Any, blob: bytes, short: bool) -> None:
        handed.append(blob[0] if blob else -1)
        plain(assoc, blob, short)

    monkeypatch.setattr(store_answer, "_hand_to_dul", spy)
    answers.append("abort")
    assoc = _sender(port)
    try:
        status = _send(assoc, _instance(0), 1)
    finally:
        if assoc.is_established:
            assoc.release()
    assert status == Dataset()
    deadline = time.monotonic() + 30
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert handed == [0x07]  # the A-ABORT PDU, read by the sender and given to the DUL
