"""Test controls of the local identity platform (``/_control/...``)."""

from __future__ import annotations

from typing import Any

import requests

from localenv.env import EnvInfo


class IdpControl:
    def __init__(self, info: EnvInfo) -> None:
        self.base = f"{info.authority_host}/_control"
        self.session = requests.Session()
        self.session.verify = info.ca_file
        self.session.trust_env = False

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.session.request(method, f"{self.base}/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def set_token_lifetime(self, seconds: float) -> None:
        self._call("POST", "settings", {"token_lifetime": seconds})

    def fail(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        status: int = 503,
        aadsts: int | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
        tenant: str | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        """Fail the next ``count`` token requests, or all of them for ``seconds``.

        ``aadsts`` answers like Entra with that code; ``error`` and ``description`` replace the
        code's OAuth error and text (any code, also one the platform does not know)."""
        self._call(
            "POST",
            "fail",
            {
                "count": count,
                "seconds": seconds,
                "status": status,
                "aadsts": aadsts,
                "delay": delay,
                "retry_after": retry_after,
                "tenant": tenant,
                "error": error,
                "description": description,
            },
        )

    def clear_failures(self) -> None:
        self._call("DELETE", "fail")

    def requests(self) -> list[dict[str, Any]]:
        """The token request log: time, tenant, client_id, credential, status, error_code."""
        return list(self._call("GET", "requests"))

    def issued_secrets(self) -> dict[str, list[str]]:
        """``{"tokens": [...], "assertions": [...]}``: every access token issued and client
        assertion received (newest 5000 of each), to search a daemon's output for them."""
        return dict(self._call("GET", "secrets"))

    def clear_requests(self) -> None:
        self._call("DELETE", "requests")

    def update_client(
        self,
        tenant: str,
        client_id: str,
        *,
        set_: dict[str, Any] | None = None,
        unset: list[str] | None = None,
    ) -> None:
        """Change a registered client: secrets, certificates, roles, audience, disabled..."""
        self._call(
            "POST",
            "client",
            {"tenant": tenant, "client_id": client_id, "set": set_ or {}, "unset": unset or []},
        )
