"""``smtp.send``: an e-mail per message, through an SMTP server (the standard library's smtplib:
nothing to install).

The connection is opened (and the login checked) by ``setup()``, so a wrong password or an
unreachable server keeps the step not ready with its messages queued, instead of dead-lettering
them; a connection the server closed between batches is opened again. Each message is one e-mail
with ``Message-ID: <flownb message id@flownb>``: SMTP has no idempotency, so a retry after a lost
reply sends the mail again, and that header lets receivers see the duplicate.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._duration import Duration
from ..errors import ConfigError, FatalError, RetryableError
from .base import Action, Context
from .http import Expr, compile_check, fill

__all__ = ["SmtpSend", "SmtpSendConfig"]

log = logging.getLogger(__name__)


class SmtpSendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="SMTP server host name or address")
    port: int = Field(587, ge=1, le=65535, description="SMTP port (587 submission with starttls, 465 with "
                                                       "tls, 25 relay)")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls: upgrade the connection (refused when the server does not offer "
        "it); tls: TLS from the start (port 465); none: plain text, only for a relay you trust")
    ca_file: str | None = Field(None, description="a CA bundle (PEM) to check the server's certificate "
                                                  "against, instead of the system's CAs")
    username: str | None = Field(None, description="user name, when the server requires a login")
    password_env: str | None = Field(None, description="name of an environment variable holding the "
                                                       "password (needs 'username')")
    sender: str = Field(description="From address, e.g. 'Shop <noreply@shop.example>'; '{field}' "
                                    "placeholders are filled from the message body")
    to: str = Field(description="recipients, comma-separated; '{field}' placeholders are filled from the "
                                "message body, e.g. {customer.email}")
    cc: str | None = Field(None, description="Cc recipients, comma-separated; '{field}' placeholders allowed")
    bcc: str | None = Field(None, description="Bcc recipients (not shown in the mail), comma-separated")
    reply_to: str | None = Field(None, description="Reply-To address; '{field}' placeholders allowed")
    subject: str = Field(description="subject; '{field}' placeholders are filled from the message body")
    text: str | None = Field(None, description="JSONata expression for the plain-text body; default: the "
                                               "message body as indented JSON")
    html: str | None = Field(None, description="JSONata expression for an HTML alternative of the body")
    timeout: Duration = Field(30.0, description="timeout of connecting and of each SMTP command, e.g. 30s")

    @model_validator(mode="after")
    def _password_needs_user(self):
        if self.password_env and not self.username:
            raise ValueError("'password_env' needs 'username'")
        return self


def _addresses(text: str | None) -> list[str]:
    return [a for _n, a in getaddresses([text])] if text else []


class SmtpSend(Action[SmtpSendConfig]):
    """Send an e-mail per message through an SMTP server (STARTTLS, login by password_env)."""

    Config = SmtpSendConfig
    effects: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config, step) -> None:
        for f in ("sender", "to", "subject"):
            if not getattr(config, f).strip():
                raise ConfigError(f"'{f}' is empty", step=step.name, field=f"config.{f}")
        compile_check(config.text, step, "text")
        compile_check(config.html, step, "html")

    # -- rendering (dry and live alike) ------------------------------------------------------------
    def _compile(self) -> None:
        self._text = Expr(self.config.text, step=self.ctx.step, field="config.text") if self.config.text else None
        self._html = Expr(self.config.html, step=self.ctx.step, field="config.html") if self.config.html else None

    def _render(self, body: dict, message_id: str) -> tuple[EmailMessage, list[str]]:
        cfg = self.config
        mail = EmailMessage()
        fields = {"From": fill(cfg.sender, body), "To": fill(cfg.to, body),
                  "Cc": fill(cfg.cc, body) if cfg.cc else None,
                  "Reply-To": fill(cfg.reply_to, body) if cfg.reply_to else None,
                  "Subject": fill(cfg.subject, body)}
        for name, value in fields.items():
            if value is None:
                continue
            if "\n" in value or "\r" in value:
                raise FatalError(f"the {name} header would contain a line break (from the message body); fix the "
                                 f"field it was filled from")
            mail[name] = value
        bcc = fill(cfg.bcc, body) if cfg.bcc else None
        recipients = _addresses(fields["To"]) + _addresses(fields["Cc"]) + _addresses(bcc)
        if not recipients or any("@" not in a for a in recipients):
            raise FatalError(f"no valid recipient address in To {fields['To']!r}"
                             + (f", Cc {fields['Cc']!r}" if fields["Cc"] else "") + "; fix the field it was "
                             "filled from")
        if "@" not in (_addresses(fields["From"]) or [""])[0]:
            raise FatalError(f"the sender {fields['From']!r} is not an e-mail address")
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = f"<{message_id}@flownb>"
        text = self._text(body) if self._text is not None else orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        if not isinstance(text, str):
            text = orjson.dumps(text, option=orjson.OPT_INDENT_2).decode() if text is not None else ""
        mail.set_content(text)
        if self._html is not None:
            html = self._html(body)
            if html is not None:
                mail.add_alternative(html if isinstance(html, str) else str(html), subtype="html")
        return mail, recipients

    def dry_run(self, message, ctx: Context) -> dict:
        """The mail it would send, rendered and checked as a live send is (no connection)."""
        if not hasattr(self, "_text"):
            self._compile()
        mail, recipients = self._render(message.body, message.id)
        out: dict[str, Any] = {"host": self.config.host, "port": self.config.port, "from": mail["From"],
                               "to": mail["To"], "recipients": recipients, "subject": mail["Subject"]}
        if mail["Cc"]:
            out["cc"] = mail["Cc"]
        if mail["Reply-To"]:
            out["reply_to"] = mail["Reply-To"]
        plain = mail.get_body(("plain",))
        out["text"] = plain.get_content() if plain is not None else None
        html = mail.get_body(("html",))
        if html is not None and html is not plain:
            out["html"] = html.get_content()
        return out

    # -- live ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._compile()
        cfg = self.config
        self.where = f"SMTP server {cfg.host}:{cfg.port}"
        self._password = self.ctx.secret(cfg.password_env) if cfg.password_env else None
        self.smtp: smtplib.SMTP | None = None
        self._connect()

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _connect(self) -> None:
        cfg = self.config
        try:
            if cfg.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._tls())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryableError(f"cannot connect to the {self.where} ({type(exc).__name__}: {exc}); will retry — "
                                 f"is the server running and the host/port right?") from None
        try:
            smtp.ehlo()
            if cfg.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise FatalError(f"the {self.where} does not offer STARTTLS; use security: tls for an "
                                     f"implicit-TLS port, or security: none only for a relay you trust")
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, self._password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._quit(smtp)
            raise FatalError(f"the {self.where} refused the login ({exc.smtp_code}); check 'username' and "
                             f"'password_env'") from None
        except smtplib.SMTPNotSupportedError as exc:
            self._quit(smtp)
            raise FatalError(f"the {self.where}: {exc}; remove 'username' if it needs no login, or check "
                             f"'security'") from None
        except ssl.SSLError as exc:
            self._quit(smtp)
            raise FatalError(f"TLS with the {self.where} failed ({exc}); check 'security' and 'ca_file'") from None
        except (OSError, smtplib.SMTPException) as exc:
            self._quit(smtp)
            raise RetryableError(f"the {self.where} failed during the greeting ({type(exc).__name__}: {exc}); "
                                 f"will retry") from None
        except BaseException:
            self._quit(smtp)
            raise
        self.smtp = smtp

    @staticmethod
    def _quit(smtp: smtplib.SMTP) -> None:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()

    def close(self) -> None:
        smtp = getattr(self, "smtp", None)
        if smtp is not None:
            self.smtp = None
            self._quit(smtp)

    def _alive(self) -> bool:
        if self.smtp is None:
            return False
        try:
            return self.smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def process(self, message, ctx: Context):
        out = self.process_batch([message], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_batch(self, messages, ctx: Context) -> list:
        results: list = []
        down: Exception | None = None
        if not self._alive():  # once per batch: the server may have closed an idle connection
            self.close()
            try:
                self._connect()
            except (RetryableError, FatalError) as exc:  # not the messages' fault: retried, even a refusal
                down = exc if isinstance(exc, RetryableError) else RetryableError(f"{exc}")
        for m in messages:
            try:
                mail, recipients = self._render(m.body, m.id)
            except Exception as exc:  # FatalError, or an expression's EvaluationError: this message only
                results.append(exc)
                continue
            if down is not None:
                results.append(down)
                continue
            try:
                assert self.smtp is not None
                refused = self.smtp.send_message(mail, to_addrs=recipients)
            except smtplib.SMTPRecipientsRefused as exc:
                results.append(self._refusal(exc.recipients, "refused every recipient"))
                continue
            except smtplib.SMTPResponseException as exc:
                results.append(self._refusal({"": (exc.smtp_code, exc.smtp_error)}, "refused the mail"))
                continue
            except (OSError, smtplib.SMTPException) as exc:
                self.close()
                down = RetryableError(f"the {self.where} failed ({type(exc).__name__}: {exc}); will retry")
                results.append(down)
                continue
            if refused:
                log.warning("smtp.send '%s': the %s refused some recipients of message %s: %s", ctx.step,
                            self.where, m.id, ", ".join(refused))
            results.append(m.body)
        return results

    def _refusal(self, answers: dict, what: str) -> Exception:
        codes = [code for code, _text in answers.values()]
        detail = "; ".join(f"{addr + ': ' if addr else ''}{code} "
                           f"{text.decode(errors='replace') if isinstance(text, bytes) else text}"
                           for addr, (code, text) in answers.items())
        if codes and all(400 <= c < 500 for c in codes):
            return RetryableError(f"the {self.where} {what} for now ({detail}); will retry")
        return FatalError(f"the {self.where} {what} ({detail}); check the addresses and the message")
