"""JupyterLab 4 + ipywidgets 8 in real (Debian) Chromium, driven by Playwright.

Starts JupyterLab on 127.0.0.1 (free port, token, isolated config/runtime/settings directories) on a
copy of notebooks/, runs every cell of the example notebooks, types a new expression into the
MappingEditor and waits for the preview to show the expected values, clicks sample paths into the
expression at the caret, clicks a palette component in the FlowBuilder and waits for the new step.

After running each notebook it checks what a reader sees (:func:`_check_looks_finished`): no table
header breaks inside a word, no stderr output area inside a flownb widget, checkboxes level with
their labels, no empty bordered box. Then it takes a picture of the whole notebook (sidebar closed,
the window as tall as the notebook) into ``SHOTS``: test-artifacts/notebooks/ (git-ignored) unless
``FLOWNB_NOTEBOOK_SHOTS`` names another directory — the committed pictures of docs/img/notebooks/after/
are made with ``FLOWNB_NOTEBOOK_SHOTS=docs/img/notebooks/after``. Other screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import stop

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FLOWNB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = Path(os.environ.get("FLOWNB_NOTEBOOK_SHOTS") or ARTIFACTS / "notebooks")
if not SHOTS.is_absolute():
    SHOTS = ROOT / SHOTS
T = 180_000  # ms: a loaded 2-core CI machine starts kernels slowly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/ci-deps does it)")
    base = tmp_path_factory.mktemp("lab")
    work = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "build"))
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "rt"),
           "JUPYTER_DATA_DIR": str(base / "data"), "JUPYTER_PLATFORM_DIRS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
           "--ServerApp.open_browser=False", "--allow-root", f"--ServerApp.token={token}",
           f"--ServerApp.root_dir={work}", "--expose-app-in-browser", "--ServerApp.port_retries=0",
           f"--LabApp.user_settings_dir={base / 'settings'}", f"--LabApp.workspaces_dir={base / 'ws'}"]
    log = (base / "lab.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(base / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "token": token, "dir": work}
    finally:
        stop(proc, timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(T)
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"), full_page=True)
    ctx.close()


_RUN_ALL = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  // the command acts on the notebook tracker's current widget: make sure it is this one
  app.shell.activateById(panel.id);
  await panel.revealed;
  await app.commands.execute('notebook:run-all-cells');
  return true;
}"""

_ALL_DONE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  return panel.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount !== null);
}"""

_ERRORS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const out = [];
  panel.content.widgets.forEach((c, i) => {
    if (c.model.type !== 'code') return;
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') out.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  });
  return out;
}"""

_COLUMN = """([root, column]) => {
  const table = document.querySelectorAll(root)[0].querySelector('.flownb-preview table');
  if (!table) return null;
  const heads = [...table.querySelectorAll('thead th')].map(th => th.textContent);
  const i = heads.indexOf(column);
  if (i < 0) return null;
  return [...table.querySelectorAll('tbody tr')].map(tr => tr.children[i].textContent);
}"""


# Words of table headers split over two lines: a word (a run of non-spaces) whose characters lie on
# more than one line box. Range.getClientRects gives one rectangle per line a range spans.
_HEADER_WORD_BREAKS = """() => {
  const out = [];
  for (const th of document.querySelectorAll('.jp-OutputArea-output th')) {
    const text = th.firstChild && th.firstChild.nodeType === Node.TEXT_NODE ? th.firstChild : null;
    if (!text || th.childNodes.length !== 1 || !th.getClientRects().length) continue;
    const re = /\\S+/g;
    let m;
    while ((m = re.exec(text.data))) {
      const r = document.createRange();
      r.setStart(text, m.index);
      r.setEnd(text, m.index + m[0].length);
      const tops = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
      if (tops.size > 1) out.push(m[0]);
    }
  }
  return out;
}"""

# stderr output areas (the pink boxes) inside a flownb widget
_WIDGET_STDERR = """() => [...document.querySelectorAll(
    '[class*="flownb-"] [data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.textContent.slice(0, 200))"""

# a checkbox and its label: vertical centres within 1 px, the label not cut off (ipywidgets' label
# element clips its text with an ellipsis: cut when its content is wider than its box)
_CHECKBOXES = """() => [...document.querySelectorAll('[class*="flownb-"] .widget-checkbox')]
  .filter(c => c.getClientRects().length)
  .map(c => {
    const box = c.querySelector('input[type=checkbox]').getBoundingClientRect();
    const holder = c.querySelector('.widget-label-basic');
    const text = holder.querySelector('span') || holder;
    const l = text.getBoundingClientRect();
    return {text: text.textContent, offset: Math.abs((box.top + box.bottom) / 2 - (l.top + l.bottom) / 2),
            cut: holder.scrollWidth > holder.clientWidth + 1};
  })"""

# visible bordered boxes of flownb widgets with nothing in them (e.g. a result area before any run)
_EMPTY_BOXES = """() => [...document.querySelectorAll('[class*="flownb-"] *')]
  .filter(e => e.getClientRects().length && e.offsetHeight > 4 && !e.textContent.trim()
          && !e.matches('input, select, textarea, button') && !e.closest('table')
          && !e.querySelector('input, select, textarea, button, svg, img, canvas')
          && ['Top', 'Bottom'].every(s => parseFloat(getComputedStyle(e)['border' + s + 'Width']) > 0))
  .map(e => e.className || e.tagName)"""


def _check_looks_finished(page) -> None:
    """What a reader sees in every notebook: the widgets look finished (issue 17)."""
    assert page.evaluate(_HEADER_WORD_BREAKS) == []
    assert page.evaluate(_WIDGET_STDERR) == []
    boxes = page.evaluate(_CHECKBOXES)
    assert [b for b in boxes if b["offset"] > 1 or b["cut"]] == [], boxes
    assert page.evaluate(_EMPTY_BOXES) == []


_FULL_HEIGHT = """() => {
  const app = window.jupyterapp;
  app.shell.collapseLeft();
  app.shell.collapseRight();
  const root = app.shell.currentWidget.content.node;
  const scroller = root.querySelector('.jp-WindowedPanel-outer') || root;  // what scrolls in Lab 4
  scroller.scrollTop = 0;
  // the end of the last cell, not scrollHeight: Lab pads the notebook to scroll past its end
  const cells = root.querySelectorAll('.jp-Cell');
  const end = cells[cells.length - 1].getBoundingClientRect().bottom - scroller.getBoundingClientRect().top;
  const chrome = window.innerHeight - scroller.clientHeight;
  return Math.ceil(end + chrome + 24);
}"""


def _notebook_picture(page, name: str) -> Path:
    """The whole notebook as a reader scrolls through it, in one PNG named after the notebook."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 1400
    scroller = ("(r => r.querySelector('.jp-WindowedPanel-outer') || r)"
                "(window.jupyterapp.shell.currentWidget.content.node)")
    was = page.evaluate(f"() => {scroller}.scrollTop")
    for _ in range(4):  # the notebook re-lays out at the new height (lazy cells render): settle
        height = min(page.evaluate(_FULL_HEIGHT), 16_000)
        if page.viewport_size and page.viewport_size["height"] == height:
            break
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(700)
    page.evaluate(f"() => {{ {scroller}.scrollTop = 0; }}")
    page.mouse.move(0, 0)  # no hover highlight
    out = SHOTS / f"{Path(name).stem}.png"
    page.screenshot(path=str(out))
    page.set_viewport_size({"width": width, "height": 1000})
    page.wait_for_timeout(300)
    page.evaluate(f"() => {{ {scroller}.scrollTop = {was}; }}")  # where run-all left it, as before
    page.wait_for_timeout(300)
    return out


# every stderr output area of the notebook (the pink boxes), whoever wrote it
_PAGE_STDERR = """() => [...document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.textContent.slice(0, 200))"""


def _open_and_run(page, lab, name: str, *, stderr: bool = False) -> None:
    """Open ``name``, run every cell, take its picture and check it looks finished; ``stderr``: the
    notebook may write to stderr outside the widgets. None of the four does: 04 runs a LocalRuntime
    whose batches dead-letter records, and its warnings do not reach a notebook (flownb's notebook
    log handler); the widgets, flow.test and the export write none."""
    # a workspace of its own, so no tab of an earlier test is restored beside this notebook
    workspace = name.split(".")[0]
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           f"&& window.jupyterapp.shell.currentWidget.context.path === {json.dumps(name)}",
                           timeout=T)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=T)
    page.evaluate(_RUN_ALL)
    page.wait_for_function(_ALL_DONE, timeout=T, polling=500)
    assert page.evaluate(_ERRORS) == []
    _notebook_picture(page, name)
    _check_looks_finished(page)
    if not stderr:
        assert page.evaluate(_PAGE_STDERR) == []


def test_mapping_editor_preview_follows_typing(page, lab):
    _open_and_run(page, lab, "01-prototype-rules.ipynb")
    editor = page.locator(".flownb-mapping-editor").first
    editor.wait_for(state="visible", timeout=T)
    page.wait_for_function(_COLUMN, arg=[".flownb-mapping-editor", "country"], timeout=T)
    before = page.evaluate(_COLUMN, [".flownb-mapping-editor", "country"])
    assert before == ["GB", "US", "GB", "NL", "US", "US"]
    page.screenshot(path=str(_artifact("mapping-editor-before.png")), full_page=True)

    rows = editor.locator(".flownb-field")
    assert rows.count() == 4
    country = rows.nth(2).locator(".flownb-expr input")
    country.click()
    country.fill("")
    country.type("$lowercase(customer.country) & '!'", delay=20)
    page.wait_for_function(
        f"args => JSON.stringify(({_COLUMN})(args)) === JSON.stringify(['gb!','us!','gb!','nl!','us!','us!'])",
        arg=[".flownb-mapping-editor", "country"], timeout=T, polling=250)
    assert "1 of 6 rows fail" in editor.locator(".flownb-summary").inner_text()

    country.fill("$lowercase(customer.country")  # broken: the error appears with its position
    error = rows.nth(2).locator(".flownb-row-error .flownb-error")
    error.wait_for(state="visible", timeout=T)
    assert "position" in error.inner_text()
    page.screenshot(path=str(_artifact("mapping-editor-error.png")), full_page=True)

    # the column of a broken field stays in the preview, marked, with one line saying why
    page.wait_for_function("() => document.querySelector('.flownb-mapping-editor .flownb-not-computed')",
                           timeout=T)
    assert "not computed: country" in editor.locator(".flownb-not-computed").inner_text()
    assert page.evaluate(_COLUMN, [".flownb-mapping-editor", "country"]) == ["—"] * 6

    # sample paths go in at the caret: click into a new field, click a path, type, click another
    editor.locator(".flownb-add-field").click()
    rows.nth(4).wait_for(state="visible", timeout=T)
    rows.nth(4).locator(".flownb-name input").fill("line")
    line = rows.nth(4).locator(".flownb-expr input")
    line.click()
    editor.locator(".flownb-path", has_text="items.qty").first.click()
    _wait_value(page, line, "items.qty", focused=True)  # the click gave the box its focus back
    page.keyboard.type(" * ", delay=20)  # the caret after the path
    editor.locator(".flownb-path", has_text="items.price").first.click()
    _wait_value(page, line, "items.qty * items.price", focused=True)
    page.keyboard.press("Home")  # then in front of everything: the caret the browser reports is used
    page.keyboard.type("$string(", delay=20)
    page.keyboard.press("End")
    page.keyboard.type(")", delay=20)
    page.keyboard.press("ArrowLeft")  # and at once (no wait for the kernel) a click: the caret moved first
    editor.locator(".flownb-path", has_text="order_id").first.click()  # inside the brackets, after a word
    _wait_value(page, line, "$string(items.qty * items.price order_id)", focused=True)
    line.fill("$sum(  )")
    line.press("ArrowLeft")
    line.press("ArrowLeft")
    editor.locator(".flownb-path", has_text="items.qty").first.click()  # between the two spaces
    _wait_value(page, line, "$sum( items.qty )", focused=True)
    sums = ["3.0", "1.0", "5.0", "", "4.0", "4.0"]  # order 1004's qty is "two": its row fails
    want = json.dumps(json.dumps(sums, separators=(",", ":")))  # a JS string of the JSON.stringify form
    page.wait_for_function(f"args => JSON.stringify(({_COLUMN})(args)) === {want}",
                           arg=[".flownb-mapping-editor", "line"], timeout=T, polling=250)
    assert rows.nth(4).locator(".flownb-row-error").inner_text().strip() == ""
    page.screenshot(path=str(_artifact("mapping-editor-insert.png")), full_page=True)

    # the second editor in the notebook was given a broken expression: its message, no traceback
    broken = page.locator(".flownb-mapping-editor").nth(1)
    assert "position" in broken.locator(".flownb-row-error").inner_text()
    not_a_frame = page.locator(".flownb-mapping-editor").nth(2)
    assert "must be a pandas DataFrame" in not_a_frame.locator(".flownb-status").inner_text()


def test_flow_builder_add_step_by_click_and_run(page, lab):
    _open_and_run(page, lab, "02-assemble-and-test-flow.ipynb")
    page.locator(".jp-RenderedSVG img, .jp-RenderedSVG svg").first.wait_for(state="visible", timeout=T)
    builder = page.locator(".flownb-flow-builder").first
    builder.wait_for(state="visible", timeout=T)
    steps = builder.locator(".flownb-step")
    assert steps.count() == 4
    builder.locator(".flownb-palette-log").first.click()
    page.wait_for_function(
        "() => document.querySelectorAll('.flownb-flow-builder')[0].querySelectorAll('.flownb-step').length === 5",
        timeout=T)
    new_card = steps.nth(4)
    assert new_card.locator(".flownb-step-name input").input_value() == "log"
    new_card.locator(".flownb-step-message .flownb-ok").wait_for(state="visible", timeout=T)
    builder.locator(".flownb-run").click()
    builder.locator(".flownb-results .lm-TabBar-tab", has_text="dead letters (1)").wait_for(timeout=T)
    builder.locator(".flownb-results .lm-TabBar-tab", has_text="log (3)").click()
    # the new log step's tab shows what reached it: the three orders over min_total (cell 6 prints them)
    panel = builder.locator(".flownb-results .flownb-result-panel:visible")
    panel.wait_for(state="visible", timeout=T)
    text = panel.inner_text()
    assert all(s in text for s in ("1001", "ada@example.com", "1003", "alan@turing.org", "1005",
                                   "barbara@mit.edu")), text
    assert "1004" not in text and "1002" not in text  # dead-lettered / filtered out
    page.screenshot(path=str(_artifact("flow-builder.png")), full_page=True)


def test_export_notebook_runs_and_shows_the_flow(page, lab):
    _open_and_run(page, lab, "03-export-and-deploy.ipynb")
    page.locator(".jp-RenderedSVG img, .jp-RenderedSVG svg").first.wait_for(state="visible", timeout=T)
    # the export ran (papermill inside the kernel) and listed its files
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    assert any("docker-compose.yml" in o and "k8s/step-push.yaml" in o for o in outputs), outputs
    assert any("push url: https://crm.example.com/contacts" in o for o in outputs)
    # the monitor read the broker on 127.0.0.1: its status says where from, never a traceback
    monitor = page.locator(".flownb-monitor").first
    monitor.scroll_into_view_if_needed()
    monitor.wait_for(state="visible", timeout=T)
    status = monitor.locator(".flownb-status")
    page.wait_for_function("el => el.textContent.trim().length > 0", arg=status.element_handle(), timeout=T)
    assert "updated" in status.inner_text(), status.inner_text()
    replay = monitor.locator("button", has_text="replay dead letters")  # its whole label, not "replay dead le…"
    assert replay.evaluate("b => b.scrollWidth <= b.clientWidth + 1")
    page.screenshot(path=str(_artifact("export-notebook.png")), full_page=True)


def _wait_value(page, box, want: str, *, focused: bool = False) -> None:
    """Wait until the text box ``box`` holds ``want`` (and, with ``focused``, has the keyboard focus:
    a click on a sample path gives it back at once, so the user can type on); a timeout says what
    the box held and where the focus was."""
    check = "([el, want, focused]) => el.value === want && (!focused || document.activeElement === el)"
    try:
        page.wait_for_function(check, arg=[box.element_handle(), want, focused], timeout=T, polling=100)
    except Exception as e:
        got = page.evaluate("el => [el.value, document.activeElement === el, "
                            "(document.activeElement || {}).className]", box.element_handle())
        raise AssertionError(f"the box holds {got[0]!r} (focused: {got[1]}, focus on {got[2]!r}), "
                             f"not {want!r}{' with the focus' if focused else ''}") from e


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def test_fix_and_replay_notebook_workbench_by_clicking(page, lab):
    _open_and_run(page, lab, "04-fix-and-replay.ipynb")
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    assert any("dead letters left: 0" in o for o in outputs), outputs  # the API part of the loop
    assert any("buyer5@example.com    110" in o for o in outputs)
    retest = page.locator("div.flownb-retest").first  # the retest frame's header, coloured rows below
    assert "delivered 2" in retest.inner_text()
    wb = page.locator(".flownb-dead-letter-workbench").first
    wb.scroll_into_view_if_needed()
    wb.wait_for(state="visible", timeout=T)
    status = wb.locator(".flownb-status")
    assert "2 dead letter(s)" in status.inner_text()
    assert wb.locator(".flownb-rows select option").count() == 2
    page.screenshot(path=str(_artifact("workbench-loaded.png")), full_page=True)
    # edit one row: select it, set amount, then retest the selection with the fixed rules
    wb.locator(".flownb-rows select").select_option(index=1)
    wb.locator(".flownb-edit-field input").fill("amount")
    wb.locator(".flownb-edit-value input").fill("12.50")
    wb.locator(".flownb-set").click()
    page.wait_for_function("el => el.textContent.includes(\"'amount' set to\")", arg=status.element_handle(),
                           timeout=T)
    wb.locator(".flownb-retest-button").click()
    page.wait_for_function("el => el.textContent.includes('retest: delivered 1')", arg=status.element_handle(),
                           timeout=T)
    assert "#e3f4e1" in wb.locator(".flownb-retest-result").inner_html()  # the delivered row is green
    page.screenshot(path=str(_artifact("workbench-retest.png")), full_page=True)
    wb.locator(".flownb-replay-selected").click()
    page.wait_for_function("el => el.textContent.includes('replayed 1 dead letter(s), 1 edited')",
                           arg=status.element_handle(), timeout=T)
    assert wb.locator(".flownb-rows select option").count() == 1  # reloaded: one left
    # nothing selected: a message in the widget, never a traceback
    wb.locator(".flownb-rows select").evaluate("s => { for (const o of s.options) o.selected = false; "
                                                "s.dispatchEvent(new Event('change', {bubbles: true})); }")
    wb.locator(".flownb-replay-selected").click()
    page.wait_for_function("el => el.textContent.includes('no rows selected')", arg=status.element_handle(),
                           timeout=T)
    assert page.evaluate(_ERRORS) == []
    page.screenshot(path=str(_artifact("workbench-replayed.png")), full_page=True)
