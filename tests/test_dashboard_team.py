"""The dashboard for a team, with a plain HTTP client against a real coordinator on 127.0.0.1 (its scheduler
stopped; the administrator's job w1 is made RUNNING by hand): a member logs in with their own token, sees the
jobs' owners, is offered only the actions they may take, is refused the others (403, PERMISSION_DENIED, the
job untouched), and their session ends when their token is rotated."""
from __future__ import annotations

import http.client
import json

import pytest

from coordinator.access.roles import SYSTEM, Caller, Role
from helpers import idle_server, running_job

pytestmark = pytest.mark.timeout(60)


class Browser:
    """Keeps the dashboard's cookies, sends the CSRF header and this origin with every POST."""

    def __init__(self, port: int):
        self.port, self.cookies = port, {}

    def request(self, method: str, path: str, body: str = "", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {**(headers or {}), "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        for cookie in response.msg.get_all("Set-Cookie") or []:
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name] = value
        return response, data

    def login(self, token: str) -> int:
        return self.request("POST", "/login", f"token={token}",
                            {"Content-Type": "application/x-www-form-urlencoded"})[0].status

    def get(self, path: str):
        response, data = self.request("GET", path)
        return response.status, json.loads(data or b"{}")

    def post(self, path: str, body: dict | None = None):
        response, data = self.request("POST", path, json.dumps(body or {}), {
            "Content-Type": "application/json", "X-CSRF-Token": self.cookies.get("gradmesh_csrf", ""),
            "Origin": f"http://127.0.0.1:{self.port}"})
        return response.status, json.loads(data or b"{}")


@pytest.fixture
def dash(start_coordinator):
    srv = idle_server(start_coordinator, http_port=0)
    running_job(srv)   # w1, the administrator's
    return srv


def test_a_member_sees_owners_and_is_offered_only_their_own_actions(dash):
    _, ana_token = dash.core.accounts.add(SYSTEM, "ana", Role.MEMBER)
    ana = Browser(dash.dashboard.port)
    assert ana.login(ana_token) == 303
    status, listing = ana.get("/api/jobs")
    assert status == 200 and listing["user"] == {"name": "ana", "role": "member"}
    assert [(j["id"], j["owner"]) for j in listing["jobs"]] == [("w1", "admin")]
    status, job = ana.get("/api/jobs/w1")
    assert status == 200 and job["owner"] == "admin" and job["actions"] == []
    status, refused = ana.post("/api/jobs/w1/cancel", {"checkpoint": True})
    assert status == 403 and refused["code"] == "PERMISSION_DENIED" and "belongs to admin" in refused["error"]
    assert dash.core.jobs.get("w1").job.cancel_requested is False
    rows = dash.store.audit_rows(user="ana")
    assert [(r.action, r.target, r.outcome) for r in rows] == [("cancel", "w1", "denied")]
    assert rows[0].address.startswith("dashboard 127.0.0.1")

    # the administrator is offered everything, and ana's own job offers her its actions
    admin = Browser(dash.dashboard.port)
    assert admin.login(dash.token) == 303
    assert set(admin.get("/api/jobs/w1")[1]["actions"]) == {"cancel", "resume", "delete"}
    view, _ = dash.core.jobs.submit(json.dumps({"name": "mine", "workers": 1, "model": {"layers": [64, 10]},
                                                "data": {"source": "digits"}, "train": {"steps": 5}}),
                                    caller=Caller("ana", Role.MEMBER))
    assert set(ana.get(f"/api/jobs/{view.job.id}")[1]["actions"]) == {"cancel", "resume", "delete"}
    status, cancelled = ana.post(f"/api/jobs/{view.job.id}/cancel")
    assert status == 200 and cancelled["state"] == "CANCELLED"

    # a rotated token ends ana's sessions, and the old one no longer logs in
    dash.core.accounts.rotate(SYSTEM, "ana")
    assert ana.get("/api/jobs")[0] == 401
    stale = Browser(dash.dashboard.port)
    stale.login(ana_token)
    assert "gradmesh_session" not in stale.cookies
