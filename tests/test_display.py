"""Rich display of flows, messages and dead letters."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import flownb
from flownb.display import FLOW_MIME, Table, dead_letters_html, flow_mimebundle, records_html, tabs_html
from flownb.message import Message
from flownb.runtime.core import DeadLetter, ErrorInfo


def _flow(n_actions: int = 2) -> flownb.Flow:
    steps = [flownb.step(f"step-{i}", "log", replicas=i + 1,
                         retry={"max_attempts": 3, "initial": "2s", "max": "1m"} if i == 0 else None)
             for i in range(n_actions)]
    return flownb.Flow(name="orders-to-crm", trigger=flownb.step("new-orders", "webhook", token_env="T"), steps=steps)


def test_bundle_carries_spec_svg_and_text():
    flow = _flow()
    bundle = flow._repr_mimebundle_()
    assert bundle[FLOW_MIME] == flow.spec()
    assert flownb.flow.from_spec(bundle[FLOW_MIME]) == flow
    assert bundle["text/plain"] == "Flow 'orders-to-crm': new-orders (webhook) → step-0 (log) → step-1 (log)"
    svg = ET.fromstring(bundle["image/svg+xml"])  # well-formed XML
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "new-orders" in texts and "webhook" in texts and "trigger" in texts
    assert "×1 replica" in texts and "×2 replicas" in texts
    assert "retry 3× 2s…1m" in texts and "retry 5× 1s…5m" in texts  # explicit and default policies
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}rect"))) == 3
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}path"))) == 1 + 2  # marker + 2 arrows


def test_long_flows_wrap_and_names_are_escaped():
    flow = _flow(9)
    svg = ET.fromstring(flow_mimebundle(flow)["image/svg+xml"])
    assert int(svg.get("height")) > 3 * 74  # 10 boxes → 3 rows
    odd = flownb.Flow(name="x", description="<script>", trigger=flownb.step("a", "webhook", token_env="T"),
                      steps=[flownb.step("b", "log", prefix="<b>&")])
    ET.fromstring(flow_mimebundle(odd)["image/svg+xml"])


def test_records_table_escapes_and_marks_errors():
    html = records_html([{"a": "<x>", "_error": ""}, {"a": {"n": [1]}, "_error": "boom"}])
    assert "&lt;x&gt;" in html and "<x>" not in html
    assert '{&quot;n&quot;: [1]}' in html
    assert html.count("background:#fde8e8") == 1
    assert "(no rows)" in records_html([])


def test_messages_and_dead_letters_render_as_tables():
    m = Message(body={"email": "a@b.c"}, step="map")
    assert "a@b.c" in Table([m])._repr_html_() and m.id[:8] in Table([m])._repr_html_()
    d = DeadLetter(id="7", step="push", message=m, error=ErrorInfo(type="FatalError", message="HTTP 400",
                                                                   step="push", attempt=3, retryable=False))
    html = Table([d])._repr_html_()
    assert "flownb-dead-letters" in html and "FatalError: HTTP 400" in html and "a@b.c" in html
    assert dead_letters_html([]).endswith("no dead letters</div>")
    assert "<td" in Table([{"k": 1}])._repr_html_()


def test_tabs_are_css_only():
    html = tabs_html([("one", "<p>1</p>"), ("two", "<p>2</p>")])
    assert "<script" not in html
    assert html.count('type="radio"') == 2 and html.count(" checked") == 1
    assert 'data-title="two"><p>2</p>' in html


def test_reprs_are_tables_and_display_stays_lean():
    import subprocess
    import sys

    m = Message(body={"n": 1}, step="s")
    assert "<table" in m._repr_html_()
    d = DeadLetter(id="1", step="s", message=m, error=ErrorInfo(type="E", message="x", step="s", attempt=1,
                                                                retryable=False))
    assert "flownb-dead-letters" in d._repr_html_()
    code = ("import sys, flownb; f = flownb.Flow(name='a', trigger=flownb.step('t', 'webhook', token_env='T'));"
            "f._repr_mimebundle_(); flownb.Message(body={})._repr_html_();"
            "assert 'ipywidgets' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


SOURCE = '''
def check(body, ctx):
    if body["n"] == 2:
        raise ValueError("two is not allowed")
    return {"n": body["n"], "double": body["n"] * 2}
'''


def test_a_real_test_result_renders_as_tabs():
    flow = flownb.Flow(name="tabs", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("check", "python", source=SOURCE, function="check"),
                              flownb.step("audit", "log", level="debug")])
    result = flow.test([{"n": 1}, {"n": 2}, {"n": 3}])
    bundle = result._repr_mimebundle_()
    html = bundle["text/html"]
    assert "1 dead letter" in bundle["text/plain"]
    titles = list(html.split('data-title="')[1:])
    assert [t.split('"')[0] for t in titles] == ["in (3)", "check (2)", "audit (2)", "dead letters (1)",
                                                     "timings"]
    assert "ValueError: two is not allowed" in html and "flownb-dead-letters" in html
    assert '<td style="' in html and ">6<" in html  # double of 3 in the check tab
    timings = html.split('data-title="timings">')[1]
    assert ">retried<" in timings and " ms<" in timings


def test_the_model_and_export_reach_no_widget_or_frame_library():
    """flownb.display is widget-free: the flow model, export and the runtimes import it, never the
    notebook package (whose widgets need ipywidgets and pandas)."""
    import subprocess
    import sys
    code = ("import sys, flownb, flownb.display, flownb.deploy.export, flownb.runtime.local;"
            "print(sorted(m for m in ('ipywidgets', 'pandas', 'flownb.notebook') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_headers_never_break_inside_a_word_and_wide_tables_scroll():
    html = records_html([{"order_id": 1, "attempt": 2, "note": "a long text " * 20}])
    assert "overflow-wrap:anywhere" not in html and "word-break:normal" in html
    assert html.count("white-space:nowrap") == 3  # every header cell
    assert html.startswith('<div class="flownb-scroll" style="overflow-x:auto')


def test_timings_have_one_time_column_in_plain_numbers():
    import flownb
    from flownb.display import timings_html
    f = flownb.Flow(name="t", trigger=flownb.step("h", "webhook", token_env="T"),
                    steps=[flownb.step("m", "mapping", fields={"a": "a"})])
    html = timings_html(f.test([{"a": 1}]))
    assert ">time<" in html and ">seconds<" not in html and "e-0" not in html and " ms<" in html


def test_the_diagram_draws_the_on_error_actions_under_the_flow():
    from flownb import Flow, step
    flow = Flow(name="oe", trigger=step("in", "webhook", token_env="T"), steps=[step("check", "log")],
                on_error={"every": "5m", "batch": 20, "steps": [step("chat", "http.request", url="http://x"),
                                                                step("note", "log")]})
    bundle = flow._repr_mimebundle_()
    svg = bundle["image/svg+xml"]
    assert "on_error — failures of every step, at most one delivery per 5m, 20 listed" in svg
    assert svg.count('stroke-dasharray="5,3"') == 2 and svg.count("on_error action (no retries)") == 2
    assert ">chat<" in svg and ">note<" in svg
    assert bundle["text/plain"].endswith("on_error: chat (http.request) → note (log)")
    plain = Flow(name="p", trigger=step("in", "webhook", token_env="T"), steps=[step("check", "log")])
    assert "on_error" not in plain._repr_mimebundle_()["image/svg+xml"]
