"""The sync algorithm: pure code over plain values (no sockets, sessions or clocks)."""
