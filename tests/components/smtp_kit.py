"""An SMTP server of the test's own on loopback (aiosmtpd on a free port): it keeps what it receives,
can require STARTTLS and a login, and refuses chosen recipients with chosen codes."""

from __future__ import annotations

import subprocess
import time
from email import message_from_bytes
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from mqtt_kit import free_port, listening


class _Handler:
    def __init__(self, refuse: dict[str, str]):
        self.refuse = refuse
        self.received: list[tuple[str, list[str], Message]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (openssl), to serve STARTTLS and trust."""
    cert, key = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class SmtpServer:
    """``with SmtpServer(tmp, tls=True, login=("u", "pw"), refuse={"x@y": "550 no such user"}) as s:``"""

    def __init__(self, tmp: Path, *, tls: bool = False, login: tuple[str, str] | None = None,
                 refuse: dict[str, str] | None = None):
        import ssl
        self.port = free_port()
        self.handler = _Handler(refuse or {})
        self.cert: Path | None = None
        kw: dict = {}
        if tls:
            self.cert, key = self_signed(tmp)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, key)
            kw.update(tls_context=ctx, require_starttls=True)
        if login:
            def check(server, session, envelope, mechanism, data):
                ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535
            kw.update(authenticator=check, auth_required=True, auth_require_tls=tls)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kw)

    @property
    def received(self):
        return self.handler.received

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert time.monotonic() < deadline, "the test SMTP server does not listen"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()
