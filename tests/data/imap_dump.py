#!/usr/bin/env python3
"""Prints the messages of one mailbox as a JSON list of strings, read with imaplib.

usage: imap_dump.py PORT USER PASSWORD MAILBOX
Plain LOGIN on 127.0.0.1 (peerpost allows plaintext logins on loopback only). A mailbox that
does not exist prints [].
"""
import imaplib
import json
import sys

port, user, password, mailbox = sys.argv[1:5]
m = imaplib.IMAP4("127.0.0.1", int(port), timeout=20)
m.login(user, password)
typ, _ = m.select('"%s"' % mailbox, readonly=True)
out = []
if typ == "OK":
    typ, data = m.search(None, "ALL")
    for num in data[0].split():
        typ, parts = m.fetch(num, "(BODY.PEEK[])")
        assert typ == "OK", parts
        out.append(parts[0][1].decode("utf-8", "replace"))
m.logout()
print(json.dumps(out))
