"""The dashboard over plain HTTP, for the tests that talk to it without a browser (tests never import one another).

    headers = dashboard_login(port, token)             # the session's Cookie and X-CSRF-Token
    status, body = dashboard_get(port, "/api/jobs", headers)
"""
from __future__ import annotations

import http.client


def dashboard_login(port: int, token: str) -> dict[str, str]:
    """Log in to the dashboard on 127.0.0.1:port; returns the headers (Cookie, X-CSRF-Token) of the session."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/login", body=f"token={token}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 303, response.status
    cookies = dict(c.split(";")[0].split("=", 1) for c in response.msg.get_all("Set-Cookie"))
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "X-CSRF-Token": cookies["gradmesh_csrf"]}


def dashboard_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET path from the dashboard with the session's headers: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body
