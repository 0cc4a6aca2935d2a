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
The loop below is pynetdicom 3.0's ``Association._run_reactor`` with that one
change; everything else (pausing for requests the acceptor sends itself, as a
C-GET does) works as in pynetdicom.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING, cast

from pynetdicom import evt
from pynetdicom.association import Association

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


def prompt_association(event: "Event") -> None:
    """EVT_CONN_OPEN: make the new association one that answers promptly (see the module)."""
    assoc = event.assoc
    if type(assoc) is Association and assoc.is_acceptor:
        assoc.__class__ = _PromptAssociation
        assoc.dul._run_loop_delay = DUL_IDLE_SECONDS
