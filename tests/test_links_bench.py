"""bench/links.py's pieces: the tc shaping is applied, and the plain stream it measures the link with runs at
the shaped rate (not at the veth's unshaped speed, which is many times higher here).

The whole bench (`bench/links.py --quick`) takes about a minute on this machine, too long for the suite; these
take a few seconds. Root and iproute2 are needed (else skipped with the reason, as the netns tests are).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from netns_hosts import ip, require_netns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import links  # noqa: E402
from netns_topology import namespace_hosts, parse_rate, shape  # noqa: E402


def test_rates_parse_and_bad_ones_are_refused():
    assert parse_rate("10gbit") == 10e9 and parse_rate("1gbit") == 1e9 and parse_rate("250mbit") == 250e6
    with pytest.raises(ValueError, match="rate must be"):
        parse_rate("fast")


@pytest.mark.timeout(120)
def test_shaped_link_carries_the_shaped_rate_and_unshaping_removes_it(tmp_path):
    probe = f"gl{os.getpid() % 100000}-probe"
    require_netns(probe)
    ip("netns", "del", probe, check=False)
    env = links.base_env()
    with namespace_hosts(tmp_path, 2, subnet=200 + os.getpid() % 50, net=79, prefix=f"gt{os.getpid() % 100000}") as t:
        a, b = t.hosts
        shown = [shape(t.namespaces[h], "200mbit") for h in t.hosts]
        assert all("tbf" in s and "rate 200Mbit" in s for s in shown), shown
        there = links.stream_rate(t, env, a, b, 1.0)
        back = links.stream_rate(t, env, b, a, 1.0)
        for rate in (there, back):           # TCP reaches most of the rate, and never much beyond it
            assert 0.6 * 200e6 < rate < 1.05 * 200e6, rate
        assert "tbf" not in shape(t.namespaces[a], None)
        # unshaped, the same stream runs well above the old rate (a veth moves Gbit/s even on a loaded box)
        assert links.stream_rate(t, env, a, b, 1.0) > 2 * 200e6
