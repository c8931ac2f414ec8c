"""What an operator should do about each AADSTS code (facts: shared Exchange Online notes)."""

from __future__ import annotations

# Codes that no retry will fix: the configuration or the directory must change.
PERMANENT_CODES = frozenset(
    {
        7000215,
        7000222,
        700016,
        90002,
        700027,
        50012,
        700024,
        70021,
        70011,
        1002012,
        500011,
        7000112,
        53003,
        7000216,
        70003,
    }
)

_HINTS = {
    7000215: "the client secret is wrong: use the secret's Value (shown once when it was "
    "created), not its Secret ID, in {secret_source}",
    7000222: "the client secret has expired: add a new one under App registrations > "
    "Certificates & secrets and write it to {secret_source}",
    700016: "application {client_id} is not known in tenant {tenant_id}: check client_id and "
    "tenant_id, and grant admin consent in this tenant",
    90002: "tenant {tenant_id} was not found: check tenant_id (directory GUID or verified "
    "domain) and authority_host (sovereign clouds have their own)",
    700027: "the certificate assertion was rejected: upload the certificate with thumbprint "
    "{thumbprint} to the app registration (Certificates & secrets), or send only the leaf",
    50012: "the certificate assertion was rejected: upload the certificate with thumbprint "
    "{thumbprint} to the app registration, or send only the leaf certificate",
    700024: "the client assertion is outside its validity window: check this host's clock (NTP)",
    70021: "no federated credential matches the presented token: check the federated "
    "credential's issuer and subject (system:serviceaccount:<namespace>:<name>)",
    70011: "invalid scope: it must be <resource>/.default, e.g. "
    "https://outlook.office365.com/.default",
    1002012: "invalid scope: it must be <resource>/.default, e.g. "
    "https://outlook.office365.com/.default",
    500011: "the resource of the scope is not in the tenant: use "
    "https://outlook.office365.com/.default",
    7000112: "the application is disabled in this tenant: enable it under Enterprise "
    "applications > Properties",
    53003: "blocked by Conditional Access: exclude this workload identity from the policy",
    90055: "Entra ID is throttling the tenant; requests are retried with backoff",
}


def hint_for(code: int | None, **values: str) -> str | None:
    """The hint for an AADSTS code, with the configuration's values filled in."""
    if code is None or code not in _HINTS:
        return None
    template = _HINTS[code]
    for key in ("secret_source", "client_id", "tenant_id", "thumbprint"):
        values.setdefault(key, f"<{key}>")
    return template.format(**values)
