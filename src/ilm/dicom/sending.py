"""C-STORE sub-operations of C-GET and C-MOVE sent from the stored file, not from a dataset.

pynetdicom's C-GET and C-MOVE SCPs take one pydicom Dataset per
sub-operation and encode it again before sending it: parsing the stored
bytes and writing the elements back cost about 1.5 ms of CPU per 512 KB CT
image here, on the path of every C-STORE. pynetdicom's ``send_c_store`` also
takes the path of a Part 10 file and, with
``pynetdicom._config.STORE_SEND_CHUNKED_DATASET``, sends that file's dataset
bytes as they are, never decoding them; it then needs a presentation context
accepted in the stored transfer syntax.

``send_files_over(assoc)`` wraps the ``send_c_store`` of one association (a
C-MOVE's sub-association, a C-GET requester's association) so that a
``StoredFile`` yielded by a retrieve handler is sent from its file. That file
was hashed against the catalog's SHA-256 when it was read ahead
(``ArchiveService.checked_file``) and is opened again here only if it is
still the file that was hashed (``CheckedFile.open``; on Linux pynetdicom then
reads it through ``/proc/self/fd`` of that very open file). When it is not
(moved to another tier meanwhile), or the destination did not accept the
stored transfer syntax, the instance is read again (``reread``, checked
against the same SHA-256) and sent as a dataset, which pynetdicom converts
to an accepted transfer syntax if it must.

An ``Unsendable`` stands for an instance that could not be read: its send
fails before a byte is sent, so pynetdicom counts a failed sub-operation and
lists its SOP Instance UID in the final response's Failed SOP Instance UID
List. Neither stand-in has file meta, so an association whose
``send_c_store`` is not wrapped refuses to send it (a failed sub-operation,
never a dataset of two elements). Once the peer has aborted, every further
send fails at once instead of waiting out the DIMSE timeout.

The C-MOVE sub-association itself (``sending_association``, bound to its
EVT_ESTABLISHED) also drops two of pynetdicom's fixed waits per instance,
as ``ilm.dicom.prompt`` does for accepted associations: each
``send_c_store`` first waits for the association's loop to pause (that loop
sleeps 1 ms before it looks at its queue: most of a millisecond when
instances follow each other), and its DUL loop sleeps 1 ms when idle before
it sends the next request or sees the answer. Measured in ``ilm serve``
(100 CT instances to pynetdicom's storescp, load average 7-8 on 2 cores):
from the start of a C-STORE to its request being handed to the DUL 1.7-2.2
ms before, 1.0 ms after; to its last PDU sent 1.1-1.3 ms, 0.8-1.0 ms; 75 and
86 instances/s in the same minutes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info, read_preamble
from pydicom.dataset import Dataset
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from ilm.errors import StorageError
from ilm.storage.filesystem import CheckedFile

from ilm.dicom.prompt import DUL_IDLE_SECONDS, ended
from ilm.dicom.store_answer import SendingSocket
from ilm.dicom.store_wire import Framed, frame_dataset, send_framed, send_pdu_length

if TYPE_CHECKING:
    from pynetdicom.events import Event

__all__ = ["StoredBytes", "StoredFile", "Unsendable", "send_files_over", "sends_files", "stored_dataset", "sending_association"]

log = logging.getLogger(__name__)

_WRAPPED = "_ilm_sends_files"


def stored_dataset(blob: bytes) -> Dataset:
    """A Part 10 file as a dataset whose elements stay raw: encoding it again
    in its own transfer syntax writes the stored bytes back unchanged."""
    return dcmread(BytesIO(blob))


class StoredFile(Dataset):
    """One instance to send from its checked file (only its SOP UIDs as elements)."""

    def __init__(self, sop_class_uid: str, sop_uid: str, file: CheckedFile, reread: Callable[[], bytes]) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_uid
        self._ilm_file = file
        self._ilm_reread = reread

    def as_dataset(self) -> Dataset:
        """The instance as a dataset, for an association that does not send files."""
        try:
            with self._ilm_file.open() as fh:
                return dcmread(fh)
        except StorageError:
            return stored_dataset(self._ilm_reread())

    def send(self, plain: Callable[..., Dataset], *args: Any, **kwargs: Any) -> Dataset:
        try:
            fh = self._ilm_file.open()
        except StorageError as exc:
            log.info("%s: %s; reading it again", self.SOPInstanceUID, exc)
            return plain(stored_dataset(self._ilm_reread()), *args, **kwargs)
        with fh:
            by_fd = f"/proc/self/fd/{fh.fileno()}"
            source = by_fd if os.path.exists(by_fd) else str(self._ilm_file.path)
            if not self._meta_names_it(source):
                # pynetdicom takes the Affected SOP Class/Instance UID of a file it sends from the
                # file meta; files whose meta names other UIDs than their dataset (common: a copy
                # edited without updating its meta) are sent as datasets, under their own UIDs.
                return plain(dcmread(fh), *args, **kwargs)
            try:
                return plain(source, *args, **kwargs)
            except ValueError:  # no presentation context accepted in the stored transfer syntax
                log.debug("%s: no presentation context accepted in its stored transfer syntax: sent converted",
                          self.SOPInstanceUID)
                fh.seek(0)
                return plain(dcmread(fh), *args, **kwargs)


    def _meta_names_it(self, source: str) -> bool:
        """Whether the file meta names this instance's SOP Class and Instance UIDs."""
        try:
            meta = read_file_meta_info(source)
        except (OSError, InvalidDicomError):
            return False
        return bool(meta.get("MediaStorageSOPInstanceUID") == self.SOPInstanceUID
                    and meta.get("MediaStorageSOPClassUID") == self.SOPClassUID)


class StoredBytes(Dataset):
    """One instance to send from its checked Part 10 bytes (only its SOP UIDs as elements).

    Its data set is framed for the association ahead of time (``frame_for``, on a
    read-ahead thread) and sent through ``ilm.dicom.store_wire``; when the
    association has no context accepting the stored transfer syntax, it goes to
    pynetdicom as a dataset, which converts it."""

    def __init__(self, sop_class_uid: str, sop_uid: str, part10: bytes) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_uid
        self._ilm_part10 = part10
        self._ilm_framed: tuple[int, Framed | None] | None = None

    def as_dataset(self) -> Dataset:
        return stored_dataset(self._ilm_part10)

    def frame_for(self, assoc: "Association") -> Framed | None:
        """The data set framed for ``assoc``; None when it cannot be sent as stored."""
        cached = self._ilm_framed
        if cached is not None and cached[0] == id(assoc):
            return cached[1]
        framed = None
        try:
            fp = BytesIO(self._ilm_part10)
            read_preamble(fp, False)
            meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                                stop_when=lambda tag, vr, length: tag.group != 2)
            syntax = meta.get("TransferSyntaxUID")
            if syntax:
                context = assoc._get_valid_context(str(self.SOPClassUID), syntax, "scu", allow_conversion=False)
                framed = frame_dataset(memoryview(self._ilm_part10)[fp.tell():], cast(int, context.context_id),
                                       send_pdu_length(int(assoc.dimse.maximum_pdu_size)))
        except ValueError:  # no presentation context accepted in the stored transfer syntax
            log.debug("%s: no presentation context accepted in its stored transfer syntax: sent converted",
                      self.SOPInstanceUID)
        except InvalidDicomError as exc:
            log.debug("%s: no file meta to send it as stored (%s): sent as a dataset", self.SOPInstanceUID, exc)
        self._ilm_framed = (id(assoc), framed)
        return framed

    def send(self, assoc: "Association", plain: Callable[..., Dataset], msg_id: int = 1, priority: int = 2,
             originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
        framed = self.frame_for(assoc)
        if framed is None:
            return plain(self.as_dataset(), msg_id=msg_id, priority=priority, originator_aet=originator_aet,
                         originator_id=originator_id)
        # Written by this thread only on a C-MOVE sub-association, which carries nothing else.
        return send_framed(assoc, framed, str(self.SOPClassUID), str(self.SOPInstanceUID), msg_id, priority,
                           originator_aet, originator_id, direct=isinstance(assoc, _SendingAssociation))


class Unsendable(Dataset):
    """One instance that could not be read: sending it fails, naming why."""

    def __init__(self, sop_class_uid: str, sop_uid: str, why: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_uid
        self._ilm_why = why

    @property
    def why(self) -> str:
        return str(self._ilm_why)


def send_files_over(assoc: "Association") -> None:
    """Make ``assoc.send_c_store`` send StoredFile stand-ins from their files and fail
    Unsendable ones; any other dataset goes through unchanged. Idempotent."""
    if getattr(assoc, _WRAPPED, False):
        return
    # send_c_store(path) then sends the file's dataset bytes without decoding them (pynetdicom's
    # documented switch; ilm calls send_c_store with a path only here).
    _config.STORE_SEND_CHUNKED_DATASET = True
    plain = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if assoc.is_aborted or not assoc.is_established or assoc.acse.is_aborted():
            # The peer aborted (or the connection closed) during the previous C-STORE: fail
            # at once rather than send into it and wait out the DIMSE timeout.
            raise StorageError(f"{dataset.SOPInstanceUID} not sent: the association to the destination has ended")
        if isinstance(dataset, StoredBytes):
            return dataset.send(assoc, plain, *args, **kwargs)
        if isinstance(dataset, StoredFile):
            return dataset.send(plain, *args, **kwargs)
        if isinstance(dataset, Unsendable):
            raise StorageError(f"{dataset.SOPInstanceUID} not sent: {dataset.why}")
        return plain(dataset, *args, **kwargs)

    setattr(assoc, "send_c_store", send_c_store)
    setattr(assoc, _WRAPPED, True)


def sends_files(assoc: "Association") -> bool:
    return bool(getattr(assoc, _WRAPPED, False))


_LOOK_SECONDS = 0.001  # how often the sending association's loop looks at release, abort and timeouts


class _SendingAssociation(Association):
    """An association that only sends C-STOREs and reads their answers itself (``send_c_store``
    waits on the DIMSE queue): its loop never takes DIMSE messages, so it counts as paused for
    a sender at all times. pynetdicom's loop sleeps 1 ms, then pauses, and every
    ``send_c_store`` first waits for that pause: up to a millisecond per instance, most of
    one when instances follow each other. The loop still ends the association on a release
    the peer asks for, an abort, a stopped DUL and the network timeout, as pynetdicom's does."""

    def _run_reactor(self) -> None:
        self._is_paused = True
        while not self._kill:
            time.sleep(_LOOK_SECONDS)
            if ended(self):
                return


def sending_association(event: "Event") -> None:
    """EVT_ESTABLISHED of a C-MOVE sub-association (its loop not started yet): make it send
    files (``send_files_over``), start each C-STORE at once (``_SendingAssociation``), pick
    up each answer the moment it arrives instead of pynetdicom's 1 ms polls, reading it itself
    (ilm.dicom.store_answer), and send without Nagle's delay (TCP_NODELAY)."""
    assoc = event.assoc
    if type(assoc) is Association and assoc.is_requestor:
        assoc.__class__ = _SendingAssociation
        if type(assoc.dul.socket) is AssociationSocket:
            SendingSocket.install(assoc.dul.socket)
            assoc.dul._run_loop_delay = 0.0
        else:
            assoc.dul._run_loop_delay = DUL_IDLE_SECONDS
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each request goes out whole at once, its last partial segment not held back
            # until the previous ones are acknowledged (Nagle): dcmtk senders do the same.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send_files_over(assoc)
