"""The runtime: which mailboxes run, when each is polled, and through which session."""
