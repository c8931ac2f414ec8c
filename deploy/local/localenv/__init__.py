"""A real local stand-in for Exchange Online and Entra ID.

Dovecot validates bearer tokens as JWTs (signature, issuer, audience, expiry) and a small HTTPS
identity platform issues Entra-shaped app-only tokens to MSAL. Tests, the demo and the benchmark
all run against it; nothing here is used by the daemon itself.
"""
