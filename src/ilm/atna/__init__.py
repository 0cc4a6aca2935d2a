"""DICOM audit messages (PS3.15 A.5, IHE ATNA): building (``messages``, pure),
framing (``syslog``, pure), batching imports (``imports``) and sending
(``emitter``: queue, background thread, file and syslog sinks, spool)."""
