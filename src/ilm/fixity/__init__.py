"""Fixity: re-read stored copies and check them against the catalog's SHA-256.

``verify`` checks (ilm verify), ``scrub`` keeps checking in ilm serve at a
bounded rate, ``replicas`` keeps the second copies that a repair copies from.
A bad or missing copy is marked in the catalog (never served again), audited,
and repaired from another verified copy when there is one; the last copy of
an instance is never deleted, even a bad one.
"""

from ilm.fixity.verify import CopyProblem, VerifyReport, verify

__all__ = ["CopyProblem", "VerifyReport", "verify"]
