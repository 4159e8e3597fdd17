"""FlowBuilder: assemble a flow from installed components with forms, test it on a sample, save it.

``builder = flownb.FlowBuilder(sample=df)`` shows a palette of the installed components (click one:
a trigger replaces the trigger, an action is appended), one card per step with a form drawn from
the component's config model, ↑/↓/✕ buttons, and inline validation. "run on sample" runs
``flow.test(sample)`` and shows each step's output in its own tab plus the dead letters.
``builder.flow`` is the :class:`flownb.Flow`; "save" writes flow.yaml.

A route step (palette: ``route``, or :meth:`FlowBuilder.add_route`) is a card of its own: its mode,
and per branch a name, a condition (``when``) and its steps — each an ordinary step card, added
with the branch's "+ step" menu or ``builder.add(component, branch=("route", "branch"))`` — plus
an optional default branch. Branches are added and removed with their buttons or
:meth:`_RouteCard.add_branch` / :meth:`_RouteCard.remove_branch`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import ipywidgets as w

from .. import registry
from ..display import dead_letters_html, effects_tabs, flow_svg, records_html, timings_html
from ..errors import FlownbError, SpecError
from ..flow import DEFAULT_BRANCH, ROUTE, Branch, Flow, RetryPolicy, RouteSpec, Step, fill_templates
from ._common import Debouncer, as_sample, error_html, log, ok_html, style_widget
from .forms import ConfigForm

__all__ = ["FlowBuilder"]

DEFAULT_TRIGGER = Step(name="incoming", component="webhook", config={"token_env": "WEBHOOK_TOKEN"})


def _css(key: str) -> str:
    return key.replace(".", "-").replace("_", "-")



def _move_buttons(builder: FlowBuilder, card: Any) -> list:
    """A card's ↑, ↓ and trash buttons: move it within its list of steps, or remove it."""
    buttons = []
    for icon, tip, fn in (("arrow-up", "move up", lambda _b: builder.move(card, -1)),
                          ("arrow-down", "move down", lambda _b: builder.move(card, 1)),
                          ("trash", "remove this step", lambda _b: builder.remove(card))):
        b = w.Button(icon=icon, tooltip=tip, layout=w.Layout(width="3em"))
        b.add_class(f"flownb-step-{icon}")
        b.on_click(fn)
        buttons.append(b)
    return buttons

class _StepCard:
    """One step of the builder: name, component form, replicas/retry, validation message."""

    def __init__(self, builder: FlowBuilder, step: Step, trigger: bool):
        self.builder = builder
        self.trigger = trigger
        self.component = step.component
        self.original = step
        self.name = w.Text(value=step.name, description="name", continuous_update=False,
                           style={"description_width": "3em"}, layout=w.Layout(width="18em"))
        self.name.add_class("flownb-step-name")
        title = w.HTML(f"<b>{'trigger' if trigger else 'action'}</b> <code>{step.component}</code>")
        buttons = [] if trigger else _move_buttons(builder, self)
        self.message = w.HTML()
        self.message.add_class("flownb-step-message")
        self.form, form_widget = self._form(step)
        extra = []
        if not trigger:
            self.replicas = w.BoundedIntText(value=step.replicas, min=1, max=64, description="replicas",
                                             layout=w.Layout(width="12em"))
            self.attempts = w.BoundedIntText(value=step.retry_policy.max_attempts, min=1, max=1000,
                                             description="attempts", tooltip="retry: max attempts",
                                             layout=w.Layout(width="12em"))
            for x in (self.replicas, self.attempts):
                x.observe(lambda _c: builder._changed(), names="value")
            extra = [w.HBox([self.replicas, self.attempts])]
        self.name.observe(lambda _c: builder._changed(), names="value")
        self.box = w.VBox([w.HBox([title, self.name, *buttons]), form_widget, *extra, self.message],
                          layout=w.Layout(border="1px solid #ccc", padding="4px", margin="2px 0"))
        self.box.add_class("flownb-step")
        self.box.add_class(f"flownb-step-{_css(step.component)}")

    def _form(self, step: Step):
        try:
            cls = registry.get(step.component, step=step.name)
        except FlownbError as exc:
            self.message.value = error_html(str(exc))
            return None, w.HTML(f"<pre>{step.config}</pre>")
        form = ConfigForm(cls.Config, step.config, on_change=self.builder._changed)
        return form, form.widget

    def step(self) -> Step:
        """The Step of this card (SpecError/ValueError when a widget holds something invalid)."""
        config = self.form.config() if self.form else dict(self.original.config)
        kw: dict[str, Any] = {}
        if not self.trigger:
            kw["replicas"] = self.replicas.value
            if self.attempts.value != self.original.retry_policy.max_attempts or self.original.retry:
                kw["retry"] = (self.original.retry or RetryPolicy()).model_copy(
                    update={"max_attempts": self.attempts.value})
        try:
            return Step(name=self.name.value.strip(), component=self.component, config=config,
                        prefetch=self.original.prefetch, **kw)
        except ValueError as exc:  # pydantic: a bad step name
            raise SpecError("a step name is lowercase letters, digits and '-' (e.g. 'to-crm')",
                            step=self.name.value, field="name") from exc

    def validate(self, params: dict) -> str | None:
        """Check this step; show and return the message (None when valid)."""
        try:
            step = self.step()
            resolved = step.model_copy(update={"config": fill_templates(step.config, params, step.name)})
            registry.validate_step(resolved, trigger=self.trigger)
        except (FlownbError, ValueError) as exc:
            self.message.value = error_html(str(exc))
            return str(exc)
        self.message.value = ok_html("✓ valid")
        return None


class _BranchBox:
    """One branch of a route card: name, condition, its step cards, ✕."""

    def __init__(self, route: _RouteCard, name: str, when: str, steps: list[Step], default: bool = False):
        self.route = route
        self.default = default
        builder = route.builder
        self.name = w.Text(value=name, description="branch", continuous_update=False,
                           disabled=default, layout=w.Layout(width="14em"))
        self.name.add_class("flownb-branch-name")
        self.when = w.Text(value=when, description="when", continuous_update=False,
                           placeholder="JSONata, e.g. country = 'GB'", layout=w.Layout(width="28em"),
                           disabled=default)
        self.when.add_class("flownb-branch-when")
        for x in (self.name, self.when):
            x.observe(lambda _c: builder._changed(), names="value")
        self.cards: list[_StepCard] = [_StepCard(builder, st, trigger=False) for st in steps]
        actions = [k for k in registry.available() if k != ROUTE and _is_action(k)]
        self.pick = w.Dropdown(options=actions, value="log" if "log" in actions else (actions[0] if actions else None),
                               layout=w.Layout(width="12em"))
        self.add_button = w.Button(description="+ step", tooltip="add this component to the branch",
                                   layout=w.Layout(width="6em"))
        self.add_button.add_class("flownb-branch-add")
        self.add_button.on_click(lambda _b: builder._guard(lambda: builder.add(
            str(self.pick.value), branch=(route.name.value, self.label))))
        self.remove_button = w.Button(icon="trash", tooltip="remove this branch", layout=w.Layout(width="3em"))
        self.remove_button.add_class("flownb-branch-remove")
        self.remove_button.on_click(lambda _b: builder._guard(lambda: route.remove_branch(self.label)))
        self.steps_box = w.VBox(layout=w.Layout(margin="0 0 0 2em"))
        self.box = w.VBox([w.HBox([self.name, self.when, self.remove_button]), self.steps_box,
                           w.HBox([self.pick, self.add_button], layout=w.Layout(margin="0 0 0 2em"))],
                          layout=w.Layout(border="1px dashed #b07d12", padding="3px", margin="2px 0"))
        self.box.add_class("flownb-branch")
        self.render()

    @property
    def label(self) -> str:
        return DEFAULT_BRANCH if self.default else self.name.value.strip()

    def render(self) -> None:
        self.steps_box.children = [c.box for c in self.cards]


def _is_action(key: str) -> bool:
    try:
        return registry.get(key).kind == "action"
    except FlownbError:
        return False


class _RouteCard:
    """A route step: name, mode, branches (each with its steps), an optional default branch."""

    trigger = False

    def __init__(self, builder: FlowBuilder, step: Step):
        assert step.route is not None
        self.builder = builder
        self.original = step
        self.component = ROUTE
        self.name = w.Text(value=step.name, description="name", continuous_update=False,
                           style={"description_width": "3em"}, layout=w.Layout(width="18em"))
        self.name.add_class("flownb-step-name")
        self.mode = w.Dropdown(options=["first", "all"], value=step.route.mode, description="mode",
                               tooltip="first: the first matching branch; all: every matching branch",
                               layout=w.Layout(width="12em"))
        for x in (self.name, self.mode):
            x.observe(lambda _c: builder._changed(), names="value")
        buttons = _move_buttons(builder, self)
        self.branches = [_BranchBox(self, b.name, b.when, list(b.steps)) for b in step.route.branches]
        self.default_box: _BranchBox | None = None
        if step.route.default is not None:
            self.default_box = _BranchBox(self, DEFAULT_BRANCH, "no branch matched", list(step.route.default),
                                          default=True)
        self.add_branch_button = w.Button(description="+ branch", layout=w.Layout(width="8em"))
        self.add_branch_button.add_class("flownb-route-add-branch")
        self.add_branch_button.on_click(lambda _b: builder._guard(lambda: self.add_branch()))
        self.default_check = w.Checkbox(value=self.default_box is not None, indent=False,
                                        description="default branch (else unmatched rows are filtered)",
                                        layout=w.Layout(width="auto"))
        self.default_check.add_class("flownb-route-default")
        self.default_check.observe(lambda c: builder._guard(lambda: self.set_default(bool(c["new"]))), names="value")
        self.message = w.HTML()
        self.message.add_class("flownb-step-message")
        self.branches_box = w.VBox()
        title = w.HTML("<b>route</b>")
        self.box = w.VBox([w.HBox([title, self.name, self.mode, *buttons]), self.branches_box,
                           w.HBox([self.add_branch_button, self.default_check]), self.message],
                          layout=w.Layout(border="1px solid #b07d12", padding="4px", margin="2px 0"))
        self.box.add_class("flownb-step")
        self.box.add_class("flownb-step-route")
        self.render()

    # -- branches ---------------------------------------------------------------------------------
    def render(self) -> None:
        boxes = [b.box for b in self.branches]
        if self.default_box is not None:
            boxes.append(self.default_box.box)
        self.branches_box.children = boxes

    def branch(self, name: str) -> _BranchBox:
        for b in self.all_branches:
            if b.label == name:
                return b
        known = ", ".join(b.label for b in self.all_branches)
        raise FlownbError(f"route '{self.name.value}' has no branch '{name}'; branches: {known}")

    @property
    def all_branches(self) -> list[_BranchBox]:
        return [*self.branches, *([self.default_box] if self.default_box is not None else [])]

    def add_branch(self, name: str | None = None, when: str = "true") -> _BranchBox:
        """Add a branch (named ``name``, default ``branch-N``) taken when ``when`` holds."""
        taken = {b.label for b in self.branches}
        if name is None:
            n = len(self.branches) + 1
            while f"branch-{n}" in taken:
                n += 1
            name = f"branch-{n}"
        elif name in taken:
            raise SpecError(f"route '{self.name.value}' has a branch '{name}' already; pick another name")
        box = _BranchBox(self, name, when, [])
        self.branches.append(box)
        self.render()
        self.builder._changed()
        return box

    def remove_branch(self, name: str) -> None:
        box = self.branch(name)
        if box.default:
            self.default_check.value = False  # set_default(False) through the observer
            return
        if len(self.branches) == 1:
            raise SpecError(f"route '{self.name.value}' needs at least one branch; remove the route step instead")
        self.branches.remove(box)
        self.render()
        self.builder._changed()

    def set_default(self, on: bool) -> None:
        if on and self.default_box is None:
            self.default_box = _BranchBox(self, DEFAULT_BRANCH, "no branch matched", [], default=True)
        elif not on:
            self.default_box = None
        if self.default_check.value != on:
            self.default_check.value = on
        self.render()
        self.builder._changed()

    # -- as a step --------------------------------------------------------------------------------
    def step(self) -> Step:
        branches = [Branch(name=b.name.value.strip(), when=b.when.value.strip(), steps=[c.step() for c in b.cards])
                    for b in self.branches]
        default = [c.step() for c in self.default_box.cards] if self.default_box is not None else None
        try:
            route = RouteSpec(mode=self.mode.value, branches=branches, default=default,
                              timeout=self.original.route.timeout if self.original.route else 10.0)
            return Step(name=self.name.value.strip(), component=ROUTE, route=route, replicas=self.original.replicas,
                        retry=self.original.retry, prefetch=self.original.prefetch)
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}
            raise SpecError(f"route '{self.name.value}': {first['msg']}", step=self.name.value) from None

    def validate(self, params: dict) -> str | None:
        problems = [p for b in self.all_branches for c in b.cards if (p := c.validate(params))]
        try:
            step = self.step()
            registry.validate_step(Flow(name="x", parameters=params, trigger=DEFAULT_TRIGGER, steps=[step])
                                   .resolved(paths=False).steps[0], trigger=False)
        except (FlownbError, ValueError) as exc:
            problems.insert(0, str(exc))
        if problems:
            self.message.value = error_html(problems[0])
            return problems[0]
        self.message.value = ok_html("✓ valid")
        return None


class FlowBuilder:
    """Build a flow with widgets; ``.flow`` is the Flow, ``.run()`` tests it on ``sample``."""

    def __init__(self, sample: Any = None, *, name: str = "my-flow", flow: Flow | None = None,
                 parameters: dict | None = None, path: str | Path = "flow.yaml", debounce: float = 0.2):
        self.sample_error = None
        self.sample = None
        self.notes: list[str] = []
        if sample is not None:
            self.sample, self.sample_error = as_sample(sample)
        self.parameters = dict(parameters or (flow.parameters if flow else {}))
        self.description = flow.description if flow else ""
        self.result = None
        self._debouncer = Debouncer(self._validate_safely, debounce)
        self._build_widgets(flow.name if flow else name, path)
        self._trigger = _StepCard(self, flow.trigger if flow else DEFAULT_TRIGGER, trigger=True)
        self._cards: list[_StepCard | _RouteCard] = [self._new_card(s) for s in (flow.steps if flow else [])]
        self._render()

    def _new_card(self, step: Step) -> _StepCard | _RouteCard:
        return _RouteCard(self, step) if step.route is not None else _StepCard(self, step, trigger=False)

    def _guard(self, fn) -> None:
        """Run a button's action; a problem is shown in the status line, never as a traceback."""
        try:
            fn()
        except Exception as exc:
            log.exception("builder action failed")
            self.status.value = error_html(str(exc) if isinstance(exc, FlownbError) else f"{type(exc).__name__}: {exc}")

    # -- widgets ----------------------------------------------------------------------------------
    def _build_widgets(self, name: str, path: str | Path) -> None:
        self.name = w.Text(value=name, description="flow name", continuous_update=False)
        self.name.add_class("flownb-flow-name")
        self.name.observe(lambda _c: self._changed(), names="value")
        self.palette = self._palette()
        self.steps_box = w.VBox()
        self.status = w.HTML()
        self.status.add_class("flownb-status")
        self.diagram = w.HTML()
        self.run_button = w.Button(description="run on sample", icon="play", button_style="primary")
        self.run_button.add_class("flownb-run")
        self.run_button.on_click(lambda _b: self.run())
        self.live = w.Checkbox(value=False, description="live: really send requests and write tables/files",
                               indent=False, layout=w.Layout(width="auto", flex="0 0 auto"))
        self.live.add_class("flownb-live")
        self.path = w.Text(value=str(path), description="save to", continuous_update=False)
        self.save_button = w.Button(description="save", icon="save")
        self.save_button.add_class("flownb-save")
        self.save_button.on_click(lambda _b: self._save_clicked())
        self.run_output = w.Output()
        self.results = w.Tab(layout=w.Layout(display="none"))  # shown by the first run: no empty box before
        self.results.add_class("flownb-results")
        self.widget = w.VBox([
            style_widget(), self.name, w.HTML("<b>palette</b> — click a component to add it"), self.palette,
            self.steps_box, self.status, self.diagram,
            w.HBox([self.run_button, self.live, self.path, self.save_button]), self.run_output, self.results,
        ])
        self.widget.add_class("flownb-flow-builder")

    def _palette(self) -> w.Widget:
        rows: dict[str, list] = {"triggers": [], "actions": []}
        for key in registry.available():
            try:
                info = registry.describe(key)
            except FlownbError as exc:
                b = w.Button(description=key, disabled=True, tooltip=str(exc), layout=w.Layout(width="auto"))
                rows["actions"].append(b)
                continue
            kind = "actions" if info["kind"] == "action" else "triggers"
            b = w.Button(description=key, tooltip=info["description"] or key, layout=w.Layout(width="auto"),
                         button_style="info" if kind == "triggers" else "")
            b.add_class("flownb-palette-item")
            b.add_class(f"flownb-palette-{_css(key)}")
            b.on_click(lambda _b, key=key: self._add_clicked(key))
            rows[kind].append(b)
        return w.VBox([w.HBox([w.HTML(f"{label}:", layout=w.Layout(width="5em")),
                              w.Box(items, layout=w.Layout(flex_flow="row wrap"))])
                       for label, items in rows.items()])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    # -- editing ----------------------------------------------------------------------------------
    def add(self, component: str | Step, name: str | None = None, *, branch: tuple[str, str] | None = None,
            **config: Any) -> None:
        """Append an action (``add("log", level="info")`` or a Step such as ``editor.mapping.step("m")``);
        a trigger component replaces the trigger; ``route`` adds a route step (:meth:`add_route`).
        ``branch=("route step", "branch")``: append it to that branch of a route step instead
        (``"default"``: its default branch)."""
        if component == ROUTE and branch is None:
            self.add_route(name)
            return
        step = component if isinstance(component, Step) else \
            Step(name=name or self._unique(str(component).replace(".", "-")), component=component, config=config)
        if step.route is not None and branch is None:
            self._cards.append(_RouteCard(self, step))
            self._render()
            return
        cls = registry.get(step.component, step=step.name)
        card = _StepCard(self, step, trigger=cls.kind != "action")
        if branch is not None:
            if card.trigger or step.route is not None:
                raise SpecError(f"'{step.component}' cannot go into a route branch: a branch holds action steps "
                                f"(routes are not nested)", step=step.name)
            box = self.route_card(branch[0]).branch(branch[1])
            box.cards.append(card)
            box.render()
        elif card.trigger:
            self._trigger = card
        else:
            self._cards.append(card)
        self._render()

    def add_route(self, name: str | None = None, mode: str = "first", branches: dict[str, str] | None = None,
                  default: bool = False) -> _RouteCard:
        """Append a route step: ``branches`` maps branch name → condition (default: one branch
        ``branch-1`` taken when ``true``); ``default``: with a default branch. Its branches are then
        edited on the card (:meth:`route_card`)."""
        conds = branches or {"branch-1": "true"}
        step = Step(name=name or self._unique("route"), component=ROUTE, route=RouteSpec(
            mode=mode, branches=[Branch(name=b, when=c) for b, c in conds.items()], default=[] if default else None))
        card = _RouteCard(self, step)
        self._cards.append(card)
        self._render()
        return card

    def route_card(self, name: str) -> _RouteCard:
        """The card of route step ``name``."""
        card = self._card(name)
        if not isinstance(card, _RouteCard):
            raise FlownbError(f"step '{name}' is not a route step")
        return card

    def remove(self, which: _StepCard | _RouteCard | str | int) -> None:
        card = self._card(which)
        self._line(card).remove(card)
        self._render()

    def move(self, which: _StepCard | _RouteCard | str | int, delta: int) -> None:
        """Move a step up or down its line (the main line, or its branch)."""
        card = self._card(which)
        line = self._line(card)
        i = line.index(card)
        j = max(0, min(len(line) - 1, i + delta))
        line.insert(j, line.pop(i))
        self._render()

    def card(self, which: str | int) -> _StepCard | _RouteCard:
        """The card of the step named ``which`` (or at index ``which`` among the actions)."""
        return self._card(which)

    @property
    def step_names(self) -> list[str]:
        """The trigger and the main line's steps (a route step's branch steps: :attr:`all_step_names`)."""
        return [c.name.value for c in [self._trigger, *self._cards]]

    @property
    def all_step_names(self) -> list[str]:
        return [c.name.value for c in self._all_cards()]

    def _all_cards(self) -> list:
        out: list = [self._trigger]
        for c in self._cards:
            out.append(c)
            if isinstance(c, _RouteCard):
                out.extend(s for b in c.all_branches for s in b.cards)
        return out

    def _line(self, card) -> list:
        """The list holding ``card``: the main line or a branch's steps."""
        if card in self._cards:
            return self._cards
        for c in self._cards:
            if isinstance(c, _RouteCard):
                for b in c.all_branches:
                    if card in b.cards:
                        return b.cards
        raise FlownbError("that step is the trigger (it is replaced, not moved or removed)")

    def _card(self, which: _StepCard | _RouteCard | str | int) -> _StepCard | _RouteCard:
        if isinstance(which, (_StepCard, _RouteCard)):
            return which
        if isinstance(which, int):
            return self._cards[which]
        for c in self._all_cards():
            if c.name.value == which:
                return c
        raise FlownbError(f"no step named '{which}'; steps: {', '.join(self.all_step_names)}")

    def _unique(self, base: str) -> str:
        names = set(self.all_step_names) if hasattr(self, "_trigger") else set()
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        return name

    def _add_clicked(self, key: str) -> None:
        try:
            self.add(key)
        except Exception as exc:  # never a traceback from a click
            log.exception("adding %s failed", key)
            self.status.value = error_html(f"cannot add '{key}': {exc}")

    def _render(self) -> None:
        for c in self._cards:
            if isinstance(c, _RouteCard):
                for b in c.all_branches:
                    b.render()
        self.steps_box.children = [self._trigger.box, *[c.box for c in self._cards]]
        self._changed()

    def _changed(self) -> None:
        self._debouncer.trigger()

    # -- flow -------------------------------------------------------------------------------------
    @property
    def flow(self) -> Flow:
        """The flow the widgets describe (SpecError says what is wrong)."""
        try:
            steps = [c.step() for c in self._cards]
            trigger = self._trigger.step()
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        try:
            return Flow(name=self.name.value.strip(), description=self.description,
                        parameters=self.parameters, trigger=trigger, steps=steps)
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc), "loc": ()}
            field = ".".join(str(p) for p in first["loc"]) or None
            hint = " (a flow name is lowercase letters, digits and '-')" if field == "name" else ""
            raise SpecError(f"{first['msg']}{hint}", field=field) from None

    def validate(self) -> list[str]:
        """Validate every step now; return the problems (empty when the flow is valid)."""
        self._debouncer.flush()
        return self._validate()

    def _validate_safely(self) -> None:
        try:
            self._validate()
        except Exception as exc:  # a widget callback must never show a traceback
            log.exception("validation failed")
            self.status.value = error_html(f"validation failed: {type(exc).__name__}: {exc}")

    def _validate(self) -> list[str]:
        problems = [p for c in [self._trigger, *self._cards] if (p := c.validate(self.parameters))]
        try:
            flow = self.flow
            self.diagram.value = flow_svg(flow)
        except FlownbError as exc:
            problems.append(str(exc))
            self.diagram.value = ""
        if self.sample_error:
            problems.append(self.sample_error)
        if problems:
            n = len(problems)
            self.status.value = error_html(f"{n} problem{'s' if n != 1 else ''}: {problems[0]}")
        else:
            self.status.value = ok_html(f"flow is valid: {len(self._all_cards())} steps")
        return problems

    # -- run and save -----------------------------------------------------------------------------
    def run(self):
        """Run ``flow.test(sample)`` — dry unless the "live" box is ticked: actions with outside
        effects show what they would send; show each step's output in a tab, then the dead letters."""
        self.run_output.clear_output()
        if self.sample is None:
            self.status.value = error_html(self.sample_error or "no sample: pass FlowBuilder(sample=df) "
                                           "to run the flow on it")
            return None
        try:
            flow = self.flow
            with self.run_output, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.result = flow.test(self.sample, live=self.live.value)
        except FlownbError as exc:
            self.status.value = error_html(f"the test run failed: {exc}")
            return None
        except Exception as exc:  # shown in the widget, with the type, never as a traceback
            log.exception("test run failed")
            self.status.value = error_html(f"the test run failed: {type(exc).__name__}: {exc}")
            return None
        # what the run warned about (a raw pandas sample of a csv.poll/sql.poll source): under the status
        self.notes = [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
        self._show_result(self.result)
        if self.notes:
            self.status.value += error_html(self.notes[0])
        return self.result

    def _show_result(self, result) -> None:
        tabs = [(f"{name} ({len(rows)})", records_html(list(rows))) for name, rows in result.outputs.items()]
        for name, rows in (getattr(result, "routes", None) or {}).items():  # the branch each row took
            tabs.append((f"{name}: branches ({len(rows)})", records_html(list(rows))))
        dead = list(result.dead_letters)
        tabs.append((f"dead letters ({len(dead)})", dead_letters_html(dead)))
        tabs.extend(effects_tabs(result))
        tabs.append(("timings", timings_html(result)))
        children = []
        for _title, body in tabs:
            h = w.HTML(body)
            h.add_class("flownb-result-panel")
            children.append(h)
        self.results.children = children
        self.results.layout.display = None
        for i, (title, _body) in enumerate(tabs):
            self.results.set_title(i, title)
        self.results.selected_index = 0
        assert self.sample is not None  # run() shows a result only after running on the sample
        self.status.value = ok_html(f"ran on {len(self.sample)} sample rows; {len(dead)} dead letters") \
            if not dead else error_html(f"ran on {len(self.sample)} sample rows; {len(dead)} dead letters")

    def save(self, path: str | Path | None = None) -> Path:
        """Write the flow's spec (flow.yaml) to ``path`` (default: the 'save to' box)."""
        flow = self.flow
        flow.validate_components()
        return flow.save(Path(path or self.path.value))

    def _save_clicked(self) -> None:
        try:
            out = self.save()
        except (FlownbError, OSError) as exc:
            self.status.value = error_html(f"not saved: {exc}")
            return
        self.status.value = ok_html(f"saved {out}")
