"""ilm.dicom.store_wire frames C-STORE requests itself: the bytes must be pynetdicom's.

Each case encodes the same request with pynetdicom (C_STORE primitive ->
C_STORE_RQ message -> P-DATA primitives -> P-DATA-TF PDUs, what its DUL
writes) and with store_wire, and compares the bytes. Then one real
association: instances sent through ``send_framed`` to pynetdicom's own
storage SCP arrive byte for byte, and the status comes back as
``send_c_store`` returns it.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from ilm.dicom.store_wire import command_set, frame, frame_dataset, send_framed

CT = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_pdus(msg_id: int, sop_class: str, sop_uid: str, data: bytes, ctx: int, max_pdu: int,
                     priority: int = 2, aet: str | None = None, orig_id: int | None = None) -> bytes:
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = orig_id
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    out = b""
    for p in msg.encode_msg(ctx, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out += pdu.encode()
    return out


def _ours(msg_id: int, sop_class: str, sop_uid: str, data: bytes, ctx: int, max_pdu: int,
          priority: int = 2, aet: str | None = None, orig_id: int | None = None) -> bytes:
    cmd = command_set(msg_id, sop_class, sop_uid, priority, aet, orig_id)
    return b"".join(frame(cmd, ctx, max_pdu, command=True)) + frame_dataset(data, ctx, max_pdu).pdus


@pytest.mark.parametrize("max_pdu", [0, 16382, 131072, 1000, 7 + 64, 8191])
@pytest.mark.parametrize("size", [2, 1000, 16376, 16377, 100_000])
def test_framing_is_pynetdicoms(max_pdu: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    args = (65535, CT, "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567", data, 5, max_pdu)
    assert _ours(*args) == _pynetdicom_pdus(*args)


@pytest.mark.parametrize("aet,orig_id,priority", [(None, None, 2), ("MOVESCU", 7, 0), ("A", 1, 1),
                                                  ("SIXTEEN_CHARS_AE", 65535, 2), ("ODD", None, 2)])
@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34", "1." + "2" * 62])
def test_command_set_is_pynetdicoms(aet: str | None, orig_id: int | None, priority: int, uid: str) -> None:
    args = (3, "1.2.840.10008.5.1.4.1.1.1.2", uid, b"\x00\x00", 1, 0, priority, aet, orig_id)
    assert _ours(*args) == _pynetdicom_pdus(*args)


def test_a_pdu_limit_below_a_pdv_header_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        frame(b"abc", 1, 6, command=False)


@pytest.mark.parametrize("direct", [True, False], ids=["socket", "dul-queue"])
@pytest.mark.parametrize("max_pdu", [0, 16382])
def test_send_framed_over_a_real_association(tmp_path: Path, max_pdu: int, direct: bool) -> None:
    """Three CT instances through send_framed to pynetdicom's storage SCP on loopback (its
    maximum PDU ``max_pdu``), written to the socket or handed to the DUL thread: each
    arrives with its data set byte for byte, status 0x0000."""
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    scp = AE(ae_title="DEST")
    scp.maximum_pdu_size = max_pdu
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = server.socket.getsockname()[1]  # type: ignore[union-attr]
        scu = AE(ae_title="ILM")
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", port, ae_title="DEST", max_pdu=0)
        assert assoc.is_established
        sent: dict[str, bytes] = {}
        try:
            for n in range(3):
                ds = Dataset()
                ds.SOPClassUID = CT
                ds.SOPInstanceUID = generate_uid()
                ds.PatientID = f"P{n}"
                ds.BitsAllocated = 8
                ds.PixelData = bytes(range(256)) * (200 * (n + 1))
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                buf = BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                blob = buf.getvalue()
                fp = BytesIO(blob)
                read_preamble(fp, False)
                read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
                offset = fp.tell()
                ctx = assoc.accepted_contexts[0]
                framed = frame_dataset(blob[offset:], int(ctx.context_id or 0), int(assoc.dimse.maximum_pdu_size))
                status = send_framed(assoc, framed, CT, ds.SOPInstanceUID, msg_id=n + 1,
                                     originator_aet="MOVESCU", originator_id=9, direct=direct)
                assert status.Status == 0x0000
                sent[ds.SOPInstanceUID] = blob[offset:]
        finally:
            assoc.release()
        assert received == sent
    finally:
        server.shutdown()


def test_pdus_sent_are_at_most_128_kib_even_to_a_peer_without_limit() -> None:
    from ilm.dicom.store_wire import SEND_PDU_BYTES, send_pdu_length

    assert SEND_PDU_BYTES == 131072
    assert send_pdu_length(0) == 131072
    assert send_pdu_length(16382) == 16382
    assert send_pdu_length(10_000_000) == 131072
    framed = frame_dataset(bytes(300_000), 1, send_pdu_length(0))
    lengths = []
    pos = 0
    while pos < len(framed.pdus):
        n = int.from_bytes(framed.pdus[pos + 2:pos + 6], "big")
        lengths.append(n)
        pos += 6 + n
    assert lengths == [131072, 131072, 300_000 - 2 * 131066 + 6]
