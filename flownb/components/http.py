"""``http.request`` (an action) and ``http.poll`` (a polling trigger), on httpx.

Per-message values in ``http.request``: ``url``, ``headers`` and ``query`` values may contain
``{field}`` placeholders (``{customer.id}`` for nested fields) filled from the message body (URL
parts are percent-encoded); or give ``url_expr``, a JSONata expression that computes the whole URL.
Flow parameters (``{{ crm_url }}``) are filled earlier, when the flow is resolved.

Errors: HTTP 429 and 5xx, timeouts and refused/reset connections are retryable (``Retry-After`` —
seconds or an HTTP date — sets the delay); any other 4xx is fatal (status and a short excerpt of
the response body in the message). Secrets only as environment-variable names (``token_env``).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from .._duration import Duration
from ..errors import ConfigError, ExpressionError, FatalError, RetryableError
from .base import Action, Context, PollConfig, PollingTrigger

__all__ = ["HttpRequest", "HttpPoll", "HttpRequestConfig", "HttpPollConfig", "retry_after_seconds"]

_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}(?!\})")
_SIMPLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_EXCERPT = 200
DEFAULT_RESPONSE_HEADERS = ["content-type", "etag", "location", "last-modified"]


# -- helpers shared by both components ------------------------------------------------------------

class Expr:
    """A JSONata expression, compiled by flownb.rules; plain dotted paths skip JSONata entirely."""

    def __init__(self, text: str, *, step: str | None = None, field: str | None = None):
        self.text = text.strip()
        self._path = self.text.split(".") if _SIMPLE_PATH.match(self.text) else None
        if self.text == "$":
            self._path = []
        self._evaluate: Any = None
        if self._path is None:
            from ..rules import compile as compile_expr
            try:
                compiled = compile_expr(self.text)
            except ExpressionError as exc:
                exc.at(step=step, field=field)
                raise
            self._evaluate = getattr(compiled, "evaluate", compiled)

    def __call__(self, data: Any) -> Any:
        if self._path is not None:
            return lookup(data, self._path)
        return self._evaluate(data)


def lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def fill(template: str, body: dict, *, url: bool = False) -> str:
    """Replace ``{a.b}`` placeholders by values from ``body``; a missing field is a FatalError."""
    def sub(m: re.Match) -> str:
        value = lookup(body, m.group(1).split("."))
        if value is None:
            raise FatalError(f"placeholder '{{{m.group(1)}}}' in {template!r}: the message has no field "
                             f"'{m.group(1)}'")
        text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
        return quote(text, safe="") if url else text
    return _PLACEHOLDER.sub(sub, template)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date (delay from now, at least 0)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_EXCERPT] + ("…" if len(text) > _EXCERPT else "")


def check_response(response, what: str) -> None:
    """Raise RetryableError for 429/5xx, FatalError for other 4xx; return for 1xx-3xx."""
    status = response.status_code
    if status < 400:
        return
    reason = f"{what}: HTTP {status} {response.reason_phrase}"
    if status == 429 or status >= 500:
        after = retry_after_seconds(response.headers.get("retry-after"))
        raise RetryableError(f"{reason}; will retry" + (f" after {after:.0f}s" if after is not None else "")
                             + f": {_excerpt(response)}", after=after, data={"status": status})
    raise FatalError(f"{reason}: {_excerpt(response)}", data={"status": status})


def send(client, what: str, method: str, url: str, **kw):
    """One request with transport errors mapped: timeouts/refused/reset → RetryableError."""
    import httpx
    params = kw.pop("params", None)
    try:
        if params:  # merged into the URL's own query string (httpx would replace it)
            url = str(httpx.URL(url).copy_merge_params(params))
        response = client.request(method, url, **kw)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{what}: {method} {url} timed out ({type(exc).__name__}); will retry") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FatalError(f"{what}: bad URL {url!r}: {exc}") from exc
    except httpx.TransportError as exc:  # ConnectError, ReadError, RemoteProtocolError …
        raise RetryableError(f"{what}: {method} {url} failed: {type(exc).__name__}: {exc}; will retry") from exc
    check_response(response, what)
    return response


def response_body(response) -> Any:
    if not response.content:
        return None
    ctype = response.headers.get("content-type", "")
    if "json" in ctype:
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


class _HttpBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    query: dict[str, str] = Field(default_factory=dict, description="query-string parameters")
    token_env: str | None = Field(None, description="environment variable holding a bearer token "
                                                    "(sent as 'Authorization: Bearer …')")
    timeout: Duration = Field(30.0, description="timeout of each request, e.g. 10s")
    verify_tls: bool = Field(True, description="check the server's TLS certificate")


def _client(config: _HttpBase, ctx: Context):
    import httpx
    headers = {"User-Agent": "flownb"}
    if config.token_env:
        headers["Authorization"] = f"Bearer {ctx.secret(config.token_env)}"
    return httpx.Client(timeout=config.timeout, follow_redirects=True, headers=headers,
                        verify=config.verify_tls)


def compile_check(text: str | None, step, field: str) -> None:
    """Compile a JSONata template field of ``step`` at validation time (shared by every component whose
    config holds such a field), so a spec with a broken expression fails before anything runs."""
    if text:
        try:
            Expr(text, step=step.name, field=f"config.{field}")
            if not _SIMPLE_PATH.match(text.strip()):
                from ..rules.functions_check import check_functions
                check_functions(text, step=step.name, field=f"config.{field}")
        except ImportError as exc:  # pragma: no cover - rules ship with flownb
            raise ConfigError(f"JSONata support is missing ({exc})", step=step.name) from None


# -- http.request -------------------------------------------------------------------------------

def _form_value(v: Any) -> str:
    """One form field's text: a string as is, other values as JSON (true, 3.5, null → ''), never a
    Python repr (a list field is sent repeated, one value each)."""
    if isinstance(v, str):
        return v
    return "" if v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":"))


class HttpRequestConfig(_HttpBase):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = Field(
        "POST", description="HTTP method")
    url: str | None = Field(None, description="URL; '{field}' placeholders are filled from the message body")
    url_expr: str | None = Field(None, description="JSONata expression computing the URL from the body "
                                                   "(instead of 'url')")
    body: str | None = Field(None, description="JSONata expression for the request body; default: the "
                                               "message body (not sent with GET/HEAD/DELETE)")
    body_format: Literal["json", "form"] = Field("json", description="send the body as JSON or as an "
                                                                     "HTML form (URL-encoded; a list is the "
                                                                     "field repeated, other non-string values "
                                                                     "JSON text, null empty)")
    idempotency_key: bool = Field(True, description="send 'Idempotency-Key: <message id>' so a retried "
                                                    "request can be recognised by the server")
    output: Literal["body", "response", "merge", "input"] = Field(
        "body", description="body: the response's JSON object (other values as {'body': …}); response: "
        "{status, headers, body}; merge: the input body plus {status, headers, body} under output_field; "
        "input: the input body unchanged")
    output_field: str = Field("response", description="where 'merge' puts the response")
    response_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_RESPONSE_HEADERS),
                                        description="response headers kept in the output (lower case)")


class HttpRequest(Action[HttpRequestConfig]):
    """Call an HTTP endpoint for each message."""

    Config = HttpRequestConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        if bool(config.url) == bool(config.url_expr):
            raise ConfigError("give exactly one of 'url' or 'url_expr'", step=step.name, field="config.url")
        if config.url and not re.match(r"^(https?://|\{)", config.url):
            raise ConfigError(f"url {config.url!r} must start with http:// or https://", step=step.name,
                              field="config.url")
        compile_check(config.url_expr, step, "url_expr")
        compile_check(config.body, step, "body")

    effects = True

    def setup(self) -> None:
        self.client = _client(self.config, self.ctx)
        self._compile()

    def _compile(self) -> None:
        self._url_expr = Expr(self.config.url_expr, step=self.ctx.step) if self.config.url_expr else None
        self._body_expr = Expr(self.config.body, step=self.ctx.step) if self.config.body else None
        self._keep = {h.lower() for h in self.config.response_headers}

    def dry_run(self, message, ctx) -> dict:
        """The request it would send: method, URL, headers (the token masked), query and body."""
        if not hasattr(self, "_keep"):
            self._compile()
        kw = self._request_kwargs(message)
        headers = dict(kw["headers"])
        if self.config.token_env:
            headers["Authorization"] = f"Bearer *** (${self.config.token_env})"
        out = {"method": self.config.method, "url": self._url(message.body), "headers": headers}
        if kw.get("params"):
            out["query"] = kw["params"]
        if "json" in kw:
            out["json"] = kw["json"]
        if "data" in kw:
            out["form"] = kw["data"]
        return out

    def close(self) -> None:
        self.client.close()

    def _url(self, body: dict) -> str:
        if self._url_expr is None:
            return fill(self.config.url or "", body, url=True)  # check_config: url or url_expr
        url = self._url_expr(body)
        if not isinstance(url, str) or not url:
            raise FatalError(f"url_expr {self.config.url_expr!r} gave {url!r}, not a URL string")
        return url

    def _request_kwargs(self, message) -> dict:
        body = message.body
        headers = {k: fill(v, body) for k, v in self.config.headers.items()}
        if self.config.idempotency_key:
            headers.setdefault("Idempotency-Key", message.id)
        kw: dict[str, Any] = {"headers": headers,
                              "params": {k: fill(v, body) for k, v in self.config.query.items()}}
        if self.config.method in ("GET", "HEAD", "DELETE") and self._body_expr is None:
            return kw
        payload = self._body_expr(body) if self._body_expr is not None else body
        if self.config.body_format == "form":
            if not isinstance(payload, dict):
                raise FatalError(f"body_format 'form' needs an object body, got {type(payload).__name__}")
            kw["data"] = {k: [_form_value(x) for x in v] if isinstance(v, list) else _form_value(v)
                          for k, v in payload.items()}
        else:
            kw["json"] = payload
        return kw

    def process(self, message, ctx):
        url = self._url(message.body)
        response = send(self.client, f"http.request '{ctx.step}'", self.config.method, url,
                        **self._request_kwargs(message))
        return self._output(message.body, response)

    def _output(self, body: dict, response) -> dict:
        mode = self.config.output
        if mode == "input":
            return body
        content = response_body(response)
        if mode == "body":
            return content if isinstance(content, dict) else {"body": content}
        result = {"status": response.status_code,
                  "headers": {k: v for k, v in response.headers.items() if k.lower() in self._keep},
                  "body": content}
        if mode == "response":
            return result
        return {**body, self.config.output_field: result}


# -- http.poll ----------------------------------------------------------------------------------

class HttpPollConfig(PollConfig, _HttpBase):
    url: str = Field(description="URL of the first page")
    items: str = Field("$", description="JSONata expression (or dotted path) selecting the list of items "
                                        "in a response, e.g. data.items; '$' = the response itself")
    cursor_param: str | None = Field(None, description="query parameter carrying the saved cursor, e.g. since")
    cursor_field: str | None = Field(None, description="field (dotted path) of an item whose value, taken "
                                                       "from the last item emitted, becomes the new cursor")
    key_field: str | None = Field(None, description="unique field of an item: items whose cursor equals "
                                                    "the saved one and whose key was already emitted are "
                                                    "skipped (for APIs where the cursor is inclusive)")
    start: Any = Field(None, description="cursor sent on the first run (default: none)")
    next: str | None = Field(None, description="JSONata expression giving the next page's URL from a "
                                               "response (null/empty: last page)")
    follow_link: bool = Field(True, description="follow 'Link: <…>; rel=\"next\"' response headers")
    max_pages: int = Field(100, ge=1, description="pages fetched per poll at most; the rest come next poll")
    batch_size: int = Field(1000, ge=1, description="a poll stops after the page that brings its items to "
                                                    "this many; the next poll (at once) goes on from the "
                                                    "next page, kept in the cursor state")


class HttpPoll(PollingTrigger[HttpPollConfig]):
    """GET an API on an interval and emit new items, following pagination."""

    Config = HttpPollConfig
    samples: ClassVar[bool] = True  # GET requests

    @classmethod
    def check_config(cls, config, step) -> None:
        if not re.match(r"^https?://", config.url):
            raise ConfigError(f"url {config.url!r} must start with http:// or https://", step=step.name,
                              field="config.url")
        if bool(config.cursor_param) != bool(config.cursor_field):
            raise ConfigError("give both 'cursor_param' and 'cursor_field' (or neither)", step=step.name,
                              field="config.cursor_field")
        if config.key_field and not config.cursor_field:
            raise ConfigError("'key_field' needs 'cursor_field'", step=step.name, field="config.key_field")
        compile_check(config.items, step, "items")
        compile_check(config.next, step, "next")

    def setup(self) -> None:
        self.client = _client(self.config, self.ctx)
        self._items = Expr(self.config.items, step=self.ctx.step)
        self._next = Expr(self.config.next, step=self.ctx.step) if self.config.next else None
        self._cursor_path = self.config.cursor_field.split(".") if self.config.cursor_field else None
        self._key_path = self.config.key_field.split(".") if self.config.key_field else None
        self._backlog = False

    def close(self) -> None:
        self.client.close()

    def next_delay(self, state: dict) -> float:
        return 0.0 if self._backlog or state.get("next_url") else self.interval

    def poll(self, state: dict, ctx: Context):
        """The items of up to ``max_pages`` pages, stopping after the page that brings them to
        ``batch_size``: then the next page's URL is kept in ``state["next_url"]`` (committed with the
        batch) and the next poll starts there, so a listing of any length is held one batch at a
        time."""
        what = f"http.poll '{ctx.step}'"
        if state.get("next_url"):
            url, kw = state["next_url"], {"headers": self.config.headers}
        else:
            params = dict(self.config.query)
            cursor = state.get("cursor", self.config.start)
            if self.config.cursor_param and cursor is not None:
                params[self.config.cursor_param] = cursor if isinstance(cursor, str) else str(cursor)
            url, kw = self.config.url, {"params": params, "headers": self.config.headers}
        emitted: list[dict] = []
        self._backlog = False
        state.pop("next_url", None)
        for _page in range(self.config.max_pages):
            response = send(self.client, what, "GET", url, **kw)
            data = response_body(response)
            emitted += self._page_items(data, what)
            url, kw = self._next_url(response, data), {"headers": self.config.headers}
            if not url:
                break
            if len(emitted) >= self.config.batch_size:
                state["next_url"] = url
                break
        else:
            self._backlog = True
        emitted = self._unseen(emitted, state)
        self._advance(emitted, state)
        return emitted

    def _page_items(self, data: Any, what: str) -> list[dict]:
        items = self._items(data)
        if items is None:
            return []
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise FatalError(f"{what}: 'items' ({self.config.items}) must select a list of objects, got "
                             f"{type(items).__name__}; point it at the array in the response")
        return items

    def _next_url(self, response, data: Any) -> str | None:
        if self._next is not None:
            nxt = self._next(data)
            if nxt:
                return str(response.url.join(str(nxt)))
        if self.config.follow_link:
            link = response.links.get("next")
            if link and link.get("url"):
                return str(response.url.join(link["url"]))
        return None

    def _unseen(self, items: list[dict], state: dict) -> list[dict]:
        if not self._key_path or "cursor" not in state:
            return items
        seen = set(state.get("seen", []))
        cursor_path = self._cursor_path or []
        return [i for i in items if not (lookup(i, cursor_path) == state["cursor"]
                                         and lookup(i, self._key_path) in seen)]

    def _advance(self, items: list[dict], state: dict) -> None:
        if not self._cursor_path or not items:
            return
        last = lookup(items[-1], self._cursor_path)
        if last is None:
            raise FatalError(f"the last item has no cursor field '{self.config.cursor_field}'")
        if self._key_path:
            same = [lookup(i, self._key_path) for i in items if lookup(i, self._cursor_path) == last]
            if last == state.get("cursor"):
                same = list(dict.fromkeys([*state.get("seen", []), *same]))
            state["seen"] = same
        state["cursor"] = last
