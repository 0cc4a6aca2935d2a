"""Associations accepted by ilm's DICOM server use the prompt reactor (ilm.dicom.prompt) and
still end as pynetdicom's do: on release, on abort, and on the network timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from ilm.config import DicomSettings
from ilm.dicom import prompt
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.service import ArchiveService

AET = "ILMTEST"


def wait_for(check: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def scp(service: ArchiveService) -> Iterator[DicomServer]:
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        srv.shutdown()


def _associate(scp: DicomServer) -> object:
    ae = AE(ae_title="PROMPTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    return assoc


def test_accepted_associations_are_prompt_and_release_cleanly(scp: DicomServer) -> None:
    assoc = _associate(scp)
    (accepted,) = scp.ae.active_associations
    assert isinstance(accepted, prompt._PromptAssociation)
    assert accepted.dul._run_loop_delay == prompt.DUL_IDLE_SECONDS
    assert isinstance(accepted.dul, prompt._PromptDUL)  # waits on its socket and on a wake-up for answers
    assert isinstance(accepted.dimse, prompt._PromptDIMSE)  # encodes C-STORE success answers itself
    wake = accepted.dul._wake
    assert wake is not None
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    wait_for(lambda: not scp.ae.active_associations, "the server side of a released association to end")
    assert accepted.is_released
    wait_for(lambda: accepted.dul._wake is None, "the DUL loop to end")
    assert all(end.fileno() == -1 for end in wake)  # the wake-up pair is closed with the loop


def test_accepted_connections_acknowledge_and_answer_without_delay(scp: DicomServer) -> None:
    """A sender with Nagle's algorithm (dcmtk's storescu) holds the last short PDU of an instance
    until the earlier ones are acknowledged: the accepted socket must not delay its
    acknowledgements (TCP_QUICKACK, re-armed by every read) nor its answers (TCP_NODELAY)."""
    assoc = _associate(scp)
    (accepted,) = scp.ae.active_associations
    sock = accepted.dul.socket
    assert isinstance(sock, prompt._PromptSocket)
    raw = sock.socket
    assert raw is not None
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]


def test_prompt_socket_reads_whole_pdus_acknowledging_at_once_and_stops_at_a_closed_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(listener.getsockname())
    a, _ = listener.accept()
    listener.close()
    try:
        sock = prompt._PromptSocket.__new__(prompt._PromptSocket)
        sock.socket = a
        payload = bytes(range(256)) * 1000
        b.sendall(payload[:100_000])
        b.sendall(payload[100_000:])
        assert sock.recv(6) == payload[:6]
        assert sock.recv(len(payload) - 6) == payload[6:]
        if hasattr(socket, "TCP_QUICKACK"):  # Linux: re-armed by the read (the kernel clears it by itself)
            a.sendall(b"answer")  # sending right after receiving is what turns delayed acknowledgements on
            assert b.recv(6) == b"answer"
            b.sendall(b"x")
            assert sock.recv(1) == b"x"
            assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)
        b.sendall(b"abc")
        b.close()
        assert sock.recv(10) == b"abc"  # the peer closed: what arrived, shorter
    finally:
        a.close()
        b.close()


def test_an_aborted_association_ends(scp: DicomServer) -> None:
    assoc = _associate(scp)
    (accepted,) = scp.ae.active_associations
    assoc.abort()  # type: ignore[attr-defined]
    wait_for(lambda: not scp.ae.active_associations, "the server side of an aborted association to end")
    assert accepted.is_aborted


def test_an_idle_association_ends_at_the_network_timeout(scp: DicomServer) -> None:
    scp.ae.network_timeout = 0.5
    assoc = _associate(scp)
    (accepted,) = scp.ae.active_associations
    wait_for(lambda: not scp.ae.active_associations, "the network timeout to end an idle association")
    assert accepted.is_aborted
    wait_for(lambda: not assoc.is_established, "the peer to see the abort")  # type: ignore[attr-defined]


def _store_rsp(sop_class: str, sop_instance: str, message_id: int, status: int = 0x0000) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


@pytest.mark.parametrize("sop_class, sop_instance, message_id", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 1),  # even lengths
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567", 65535),  # odd, 64
    ("1.2.840.10008.5.1.4.1.1.128", "2.25.1", 7),
])
def test_store_success_answer_is_the_bytes_pynetdicom_would_send(sop_class: str, sop_instance: str,
                                                                   message_id: int) -> None:
    rsp = _store_rsp(sop_class, sop_instance, message_id)
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 0))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"  # command, last fragment
    assert prompt.store_success_command(rsp) == pdv[1:]


def test_other_answers_are_left_to_pynetdicom() -> None:
    assert prompt.store_success_command(_store_rsp("1.2.840.10008.5.1.4.1.1.2", "1.2.3", 1, status=0xA700)) is None
    commented = _store_rsp("1.2.840.10008.5.1.4.1.1.2", "1.2.3", 1)
    commented.ErrorComment = "note"
    assert prompt.store_success_command(commented) is None
    request = C_STORE()  # a request (C-GET sends them on the accepted association), not an answer
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3"
    request.Priority = 2
    assert prompt.store_success_command(request) is None
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    assert prompt.store_success_command(echo) is None


def test_a_store_answer_goes_through_pynetdicom_while_a_handler_watches_sent_messages(scp: DicomServer) -> None:
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    seen: list[object] = []
    assoc = _associate(scp)
    (accepted,) = scp.ae.active_associations
    accepted.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(event.message))
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "P1", "CT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    assert status.Status == 0x0000
    assert [type(m).__name__ for m in seen] == ["C_STORE_RSP"]
    assoc.release()  # type: ignore[attr-defined]
