"""The IMAP adapter: imapclient over implicit TLS with XOAUTH2 (``client``), the port the sync
core talks to (``ports``) and the FETCH response parser (``parse``)."""
