"""schemathesis hooks of scripts/openapi-check.

Every request is made as the admin (so every operation is reachable). The fuzzer itself
calls `logout-all` and `logout`, which revoke the admin's session and with it the access
token, so the token comes from a fresh login whenever an answer is 401 (schemathesis then
retries with the new token) and at least every 5 minutes.
"""

import os

import requests
import schemathesis

BASE = os.environ["OPENAPI_CHECK_BASE"]
EMAIL = os.environ["OPENAPI_CHECK_ADMIN_EMAIL"]
PASSWORD = os.environ["OPENAPI_CHECK_ADMIN_PASSWORD"]


@schemathesis.auth(refresh_interval=300)
class AdminLogin:
    def get(self, case, context):
        res = requests.post(f"{BASE}/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD}, timeout=10)
        res.raise_for_status()
        return res.json()["data"]["token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
