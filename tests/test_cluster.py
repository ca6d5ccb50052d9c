"""The embedded Dask cluster talks only to the batch that started it (autograder/cluster.py).

A Dask client can run any code on the workers, outside every sandbox, and on the hub's host the
students reach 127.0.0.1 too. The cluster's connections are TLS with certificates made for this
batch: a client without them, or with certificates of its own, is refused."""
import pytest
from distributed import Client
from distributed.security import Security

from autograder.cluster import grading_client
from autograder.grading_task import package_digest


def square(x):
    return x * x


def test_a_client_without_the_batchs_certificate_is_refused():
    with grading_client() as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert client.submit(square, 7).result() == 49, "the batch's own client works"
        for security in (None, Security.temporary()):
            with pytest.raises(Exception):  # noqa: B017 - refused however the handshake fails
                with Client(address, timeout=5, security=security) as stranger:
                    stranger.submit(square, 3).result(timeout=5)


def test_the_package_digest_ignores_where_the_course_folder_lies(monkeypatch):
    """A grading host with its course folder (or bwrap) elsewhere grades with the same digest."""
    import course_config

    before = package_digest()
    monkeypatch.setattr(course_config, "COURSE_ROOT", course_config.COURSE_ROOT / "elsewhere")
    monkeypatch.setattr(course_config, "BWRAP", "/opt/bin/bwrap")
    monkeypatch.setattr(course_config, "SIMILARITY_THRESHOLD", 0.5)
    assert package_digest() == before
    monkeypatch.setattr(course_config, "CALL_TIMEOUT_S", course_config.CALL_TIMEOUT_S + 1)
    assert package_digest() != before, "a grading limit is part of it"
