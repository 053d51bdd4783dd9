"""The store's record of operators' holds on hosts: which hosts are drained.

Quarantine is the coordinator's own short-lived judgement (failures in a window, a cool-down) and starts
afresh after a restart; a drain is a person's decision (maintenance, a bad disk) and must not be forgotten
by one, so it is kept here. Separate from `coordinator.fleet.health`, which holds the live state.
"""
from __future__ import annotations

import time

from coordinator.store.connection import StoreConnection


class HostHolds(StoreConnection):
    def drained_hosts(self) -> list[str]:
        return [r["host"] for r in self._query("SELECT host FROM drained_hosts ORDER BY host", ())]

    def set_drained(self, host: str, drained: bool) -> None:
        with self._tx(f"the drain of host {host[:100]}") as db:
            if drained:
                db.execute("INSERT OR IGNORE INTO drained_hosts (host, since) VALUES (?, ?)", (host, time.time()))
            else:
                db.execute("DELETE FROM drained_hosts WHERE host = ?", (host,))
