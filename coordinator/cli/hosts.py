"""`gradmesh hosts`: the coordinator's hosts and their health; `hosts drain HOST` / `hosts undrain HOST`.

    gradmesh hosts                 # HOST  SLOTS  FREE  STATE  FAILURES  LAST FAILURE  RETURNS
    gradmesh hosts --json          # the same as a list of objects
    gradmesh hosts drain node2     # no new ranks on node2 (running jobs stay); `undrain` lifts it

A host is healthy, suspect (failures attributed to it in the window, still used), quarantined (until
RETURNS: `gradmesh serve --host-failures N --host-failure-window S --host-cooldown S`) or drained.
"""
from __future__ import annotations

from typing import Sequence

from coordinator.cli.commands import EXIT_OK, EXIT_USAGE, CliError, make_client
from coordinator.cli.render import fmt_time, print_json, table
from coordinator.client import HostInfo

LAST_FAILURE_CHARS = 60  # of its message, in the table (--json has it whole)


def host_table(hosts: Sequence[HostInfo]) -> str:
    rows = [("HOST", "SLOTS", "FREE", "STATE", "FAILURES", "LAST FAILURE", "RETURNS")]
    for h in hosts:
        last = "-"
        if h.last_failure_unix:
            text = h.last_failure if len(h.last_failure) <= LAST_FAILURE_CHARS else h.last_failure[:LAST_FAILURE_CHARS - 3] + "..."
            last = f"{fmt_time(h.last_failure_unix)} {text}"
        rows.append((h.name, str(h.slots), str(h.free_slots), h.state, str(h.failures), last,
                     fmt_time(h.returns_unix) if h.returns_unix else "-"))
    return table(rows)


def cmd_hosts(args) -> int:
    action, host = getattr(args, "action", None), getattr(args, "host", None)
    if action and not host:
        raise CliError(f"hosts {action}: name the host (gradmesh hosts {action} HOST)", EXIT_USAGE)
    if host and not action:
        raise CliError("hosts: say what to do with the host (gradmesh hosts drain|undrain HOST)", EXIT_USAGE)
    with make_client(args) as client:
        if action == "drain":
            changed = [client.drain(host)]
        elif action == "undrain":
            changed = [client.undrain(host)]
        else:
            changed = None
        hosts = changed if changed is not None else client.hosts()
    if args.json:
        print_json([h.to_dict() for h in hosts] if changed is None else hosts[0].to_dict())
    else:
        print(host_table(hosts))
    return EXIT_OK
