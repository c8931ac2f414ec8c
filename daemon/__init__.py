"""mailsyncd: keeps Microsoft 365 mailbox metadata in a SQL database."""

__version__ = "0.1.0"
