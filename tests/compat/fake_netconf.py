#!/usr/bin/env python3
"""A tiny NETCONF 1.0 server for sshd's `netconf` subsystem in labgate's tunnel tests.

Speaks RFC 6241 over stdin/stdout with NETCONF 1.0 end-of-message framing (]]>]]>):
its <hello> first (base:1.0 only, so clients keep 1.0 framing), then one <rpc-reply>
per <rpc>: <data> for <get-config>, <ok/> for <close-session> (then it exits), an
rpc-error for anything else. Standard library only; every message bounded.
"""
import re
import sys

EOM = b"]]>]]>"
NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
MAX_MESSAGE = 1 << 20
HELLO = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<hello xmlns="{NS}"><capabilities>'
    "<capability>urn:ietf:params:netconf:base:1.0</capability>"
    "</capabilities><session-id>7</session-id></hello>"
)
CONFIG = (
    '<interfaces xmlns="urn:example:labgate"><interface><name>eth0</name>'
    "<description>reached through labgate</description></interface></interfaces>"
)


def send(text):
    sys.stdout.buffer.write(text.encode() + EOM)
    sys.stdout.buffer.flush()


def messages():
    buf = b""
    while True:
        chunk = sys.stdin.buffer.read1(65536)
        if not chunk:
            return
        buf += chunk
        while EOM in buf:
            message, buf = buf.split(EOM, 1)
            yield message.decode("utf-8", "replace")
        if len(buf) > MAX_MESSAGE:
            return


def reply(message_id, body):
    send(
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<rpc-reply message-id="{message_id}" xmlns="{NS}">{body}</rpc-reply>'
    )


def main():
    send(HELLO)
    for message in messages():
        # A client's hello (any namespace prefix, e.g. ncclient's <nc:hello>).
        if re.search(r"<([A-Za-z_][\w.-]*:)?hello\b", message):
            continue
        found = re.search(r'message-id="([^"<>&]{0,64})"', message)
        message_id = found.group(1) if found else ""
        if "get-config" in message:
            reply(message_id, f"<data>{CONFIG}</data>")
        elif "close-session" in message:
            reply(message_id, "<ok/>")
            return
        else:
            reply(
                message_id,
                "<rpc-error><error-type>protocol</error-type>"
                "<error-tag>operation-not-supported</error-tag>"
                "<error-severity>error</error-severity></rpc-error>",
            )


main()
