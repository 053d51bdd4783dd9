"""An operator's drain is kept in the store: a restarted coordinator still keeps new ranks off the host,
and an undrain is kept too. Real servers on 127.0.0.1, the same data directory, one after the other."""
import contextlib

import pytest

from coordinator.client import Client, NotFound
from coordinator.api.server import start_server

POOL = [("node-a", 2), ("node-b", 2)]


@contextlib.contextmanager
def coordinator_on(data, pool, tmp_path):
    """A coordinator over `pool` on the data directory `data`, and a client of it; stopped at the end."""
    srv = start_server(data, hosts=pool, data_roots=[tmp_path])
    try:
        with Client(srv.address, token=srv.token, timeout=10) as client:
            yield client
    finally:
        srv.stop(grace=1.0)


def states(client):
    return {h.name: h.state for h in client.hosts()}


@pytest.mark.timeout(60)
def test_a_drain_and_an_undrain_survive_a_restart(tmp_path):
    data = tmp_path / "coord"
    with coordinator_on(data, POOL, tmp_path) as client:
        assert states(client) == {"node-a": "healthy", "node-b": "healthy"}
        assert client.drain("node-b").state == "drained"
        with pytest.raises(NotFound):
            client.drain("node-z")
    with coordinator_on(data, POOL, tmp_path) as client:
        assert states(client) == {"node-a": "healthy", "node-b": "drained"}
        assert client.undrain("node-b").state == "healthy"
    with coordinator_on(data, POOL, tmp_path) as client:
        assert states(client) == {"node-a": "healthy", "node-b": "healthy"}


@pytest.mark.timeout(60)
def test_a_drained_host_that_left_the_pool_is_drained_again_when_it_returns(tmp_path):
    data = tmp_path / "coord"
    with coordinator_on(data, POOL, tmp_path) as client:
        client.drain("node-b")
    with coordinator_on(data, POOL[:1], tmp_path) as client:   # node-b taken out of the pool
        assert states(client) == {"node-a": "healthy"}
    with coordinator_on(data, POOL, tmp_path) as client:
        assert states(client)["node-b"] == "drained"
