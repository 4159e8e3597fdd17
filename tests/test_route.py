"""The ``route`` step: the model and its validation, core routing, the embedded runtime (fusion,
the end of a flow, the webhook's final bodies), flow.test and the preview, export, plan and the
diagram. Parity of the routing on all four paths: tests/parity/flows/route-*."""

from __future__ import annotations

import pytest

from flownb import Flow
from flownb.errors import ExpressionError, SpecError
from flownb.flow import load
from flownb.message import Message

HEAD = """
name: routed
trigger: {name: in, component: webhook, config: {token_env: ROUTE_TOKEN}}
"""

SPEC = HEAD + """
parameters: {limit: 100}
steps:
  - {name: shape, component: mapping, config: {expression: "$"}}
  - name: by-size
    route:
      mode: all
      branches:
        - name: big
          when: "total > {{ limit }}"
          steps:
            - {name: tag-big, component: mapping, config: {expression: "$merge([$, {'tag': 'big'}])"}}
            - {name: note-big, component: mapping, config: {expression: "$merge([$, {'n': 1}])"}}
        - name: vip
          when: "vip = true"
          steps:
            - {name: tag-vip, component: mapping, config: {expression: "$merge([$, {'tag': 'vip'}])"}}
        - name: keep
          when: "keep = true"
      default:
        - {name: small, component: mapping, config: {expression: "$merge([$, {'tag': 'small'}])"}}
  - {name: out, component: mapping, config: {expression: "$merge([$, {'done': true}])"}}
"""


def test_a_route_spec_round_trips_and_its_branch_steps_are_steps_of_the_flow():
    flow = load(SPEC)
    assert load(flow.to_yaml()) == flow
    assert "component" not in flow.spec()["steps"][1]  # a route step is written with route: only
    assert [s.name for s in flow.actions] == ["shape", "by-size", "tag-big", "note-big", "tag-vip", "small", "out"]
    assert [s.name for s in flow.all_steps][0] == "in"
    assert flow.links() == {"in": "shape", "shape": "by-size", "by-size": "out", "tag-big": "note-big",
                            "note-big": "out", "tag-vip": "out", "small": "out", "out": None}
    assert flow.branch_targets("by-size") == {"big": "tag-big", "vip": "tag-vip", "keep": "out", "default": "small"}
    assert flow.branch_of("note-big") == ("by-size", "big") and flow.branch_of("out") is None
    assert flow.step("tag-vip").component == "mapping"
    assert flow.next_step("note-big").name == "out"
    flow.validate_components()  # the {{ limit }} template of a condition is filled before compiling


@pytest.mark.parametrize("steps,message", [
    ("""
  - name: r
    route:
      branches:
        - {name: a, when: "x", steps: [{name: shape, component: log}]}
  - {name: shape, component: log}""", "step name 'shape' is used twice; step names must be unique across the flow"),
    ("""
  - name: r
    route:
      branches:
        - name: a
          when: x
          steps: [{name: inner, route: {branches: [{name: b, when: y}]}}]""", "routes cannot be nested"),
    ("""
  - name: r
    route: {branches: [{name: default, when: x}]}""", "a branch cannot be named 'default'"),
    ("""
  - name: r
    route: {branches: [{name: a, when: x}, {name: a, when: y}]}""", "branch name 'a' is used twice"),
    ("""
  - {name: r, component: log, route: {branches: [{name: a, when: x}]}}""", "a route step has no component"),
    ("""
  - {name: r, component: route}""", "a route step without 'route:'"),
    ("""
  - {name: r, route: {branches: [{name: a, when: x}]}, config: {a: 1}}""", "remove 'config:'"),
    ("""
  - {name: r, route: {branches: []}}""", "at least 1 item"),
    ("""
  - {name: r, route: {mode: any, branches: [{name: a, when: x}]}}""", "'first' or 'all'"),
    ("""
  - {name: r, route: {branches: [{name: a, whn: x}]}}""", "did you mean 'when'? allowed: name, when, steps"),
    ("""
  - {name: r, route: {mod: all, branches: [{name: a, when: x}]}}""", "did you mean 'mode'? allowed: mode, branches,"),
    ("""
  - name: r
    route:
      branches:
        - {name: a, when: x, steps: [{name: a1, component: log}, {name: a2, component: log}]}
        - {name: b, when: y, steps: [{name: b1, component: log}]}
fuse: [a2, b1]""", "a group stays within one branch"),
    ("""
  - name: r
    route: {branches: [{name: a, when: x, steps: [{name: a1, component: log}]}]}
fuse: [r, a1]""", "a route step can only end a group"),
])
def test_a_wrong_route_is_a_spec_error_that_says_what_to_do(steps, message):
    with pytest.raises(SpecError) as err:
        load(HEAD + "steps:" + steps)
    assert message in str(err.value)


def test_a_route_condition_that_does_not_compile_names_its_branch():
    flow = load(HEAD + """
steps:
  - name: r
    route: {branches: [{name: a, when: "x ="}]}""")
    with pytest.raises(ExpressionError) as err:
        flow.validate_components()
    assert err.value.step == "r" and err.value.field == "route.branches.0.when"


def test_the_route_step_sends_one_copy_per_branch_taken_each_with_its_own_id_and_destination():
    from flownb.runtime.core import Route, StepRunner
    flow = load(SPEC).resolved()
    runner = StepRunner(flow, "by-size")
    m = Message(body={"total": 500, "vip": True, "keep": True}, flow=flow.name, step="shape")
    o = runner.run(m)
    assert o.route is Route.FORWARD
    assert o.branches == ["big", "vip", "keep"] and o.targets == ["tag-big", "tag-vip", "out"]
    assert len({c.id for c in o.outputs} | {m.id}) == 4 and {c.trace for c in o.outputs} == {m.trace}
    assert all(c.body == m.body for c in o.outputs)
    small = runner.run(Message(body={"total": 1}, flow=flow.name, step="shape"))
    assert small.branches == ["default"] and small.targets == ["small"]
    bad = runner.run(Message(body={"total": "many"}, flow=flow.name, step="shape"))
    assert bad.dead and bad.error.step == "by-size" and bad.error.type == "EvaluationError"


def test_the_embedded_runtime_ends_a_fused_stage_at_a_route_step_and_fuses_within_a_branch():
    from flownb.runtime.local import LocalRuntime
    with LocalRuntime(load(SPEC), None, memory=True) as rt:
        stages = sorted({tuple(stage.names) for stage, _i in rt._stage.values()})
    # small's outputs go to out (the next step in the flattened list): fused; tag-vip's go to out too,
    # which then runs as the second member of small's stage (a stage can be entered mid-way)
    assert stages == [("shape", "by-size"), ("small", "out"), ("tag-big", "note-big"), ("tag-vip",)]


def test_flow_test_shows_the_branch_each_row_takes_and_counts_the_unmatched():
    flow = load(SPEC.replace("      default:\n        - {name: small, component: mapping, config: "
                             "{expression: \"$merge([$, {'tag': 'small'}])\"}}\n", ""))
    rows = [{"id": 1, "total": 500, "vip": True}, {"id": 2, "total": 5}, {"id": 3, "total": 5, "keep": True}]
    result = flow.test(rows)
    assert [(r["id"], r["_branch"]) for r in result.routes["by-size"]] == [
        (1, "big, vip"), (2, "(unmatched)"), (3, "keep")]
    frame = result.branches()
    assert list(frame["_branch"]) == ["big, vip", "(unmatched)", "keep"]
    c = result.counts["by-size"]
    assert (c["in"], c["out"], c["unmatched"], c["branches"]) == (3, 3, 1, {"big": 1, "vip": 1, "keep": 1})
    assert "branches: big 1, vip 1, keep 1; unmatched 1" in result.summary()
    assert sorted((r["id"], r.get("tag")) for r in result.outputs["out"]) == [(1, "big"), (1, "vip"), (3, None)]
    with pytest.raises(SpecError, match="no route step 'by-sise'; did you mean 'by-size'"):
        result.branches("by-sise")
    from flownb.display import test_result_html
    assert "by-size: branches (3)" in test_result_html(result)


def test_a_flow_ending_with_a_route_ends_with_each_branch_and_the_webhook_gets_every_final_body():
    from flownb.runtime.local import LocalRuntime
    flow = load(HEAD + """
steps:
  - name: last
    route:
      mode: all
      branches:
        - {name: a, when: "x > 1", steps: [{name: a1, component: mapping, config: {expression: "{'a': x}"}}]}
        - {name: b, when: "x > 2"}
""")
    finals: dict = {}
    with LocalRuntime(flow, None, memory=True) as rt:
        rt.add_final_listener(lambda trace, bodies: finals.__setitem__(trace, bodies))
        m3, m2, m0 = rt.submit({"x": 3}), rt.submit({"x": 2}), rt.submit({"x": 0})
        rt.drain()
    assert sorted(map(str, finals[m3.trace])) == sorted(map(str, [{"a": 3}, {"x": 3}]))
    assert finals[m2.trace] == [{"a": 2}] and finals[m0.trace] == []
    result = flow.test([{"x": 3}, {"x": 2}, {"x": 0}])
    assert sorted(map(str, result.last)) == sorted(map(str, [{"a": 3}, {"x": 3}, {"a": 2}]))
    assert result.counts["last"]["unmatched"] == 1


def test_route_preview_shows_the_branch_and_the_error_of_each_row():
    route = load(SPEC).resolved().step("by-size").route
    view = route.preview([{"total": 500, "vip": True}, {"total": 1}, {"total": "x"}])
    assert list(view["_branch"][:2]) == ["big, vip", "default"]
    assert view["_error"][0] is None and "T2009" in view["_error"][2]


def test_every_branch_step_is_a_container_on_export_and_listed_by_plan():
    from flownb.deploy import render_compose, render_manifests
    from flownb.deploy.plan import step_plans
    from flownb.runtime.upgrade import make_plan
    flow = load(SPEC)
    names = [p.name for p in step_plans(flow)]
    assert names == ["in", "shape", "by-size", "tag-big", "note-big", "tag-vip", "small", "out"]
    services = render_compose(flow)["services"]
    for n in names[1:]:  # a worker per action step, branch steps included (the webhook's has --host/--port)
        assert services[n]["command"][-2:] == ["--step", n]
    files = render_manifests(flow)
    for n in names:
        assert [o["kind"] for o in files[f"step-{n}.yaml"]][0] == "Deployment"
    old = flow.model_copy(update={"steps": [flow.steps[0], flow.steps[2]]}).revalidated()
    lines = "\n".join(make_plan(old, flow).lines())
    assert "+ step 'tag-vip' (new, empty queues; branch 'vip' of route 'by-size')" in lines
    assert "route 'by-size' (mode all): big [total > 100]: tag-big → note-big; vip [vip = true]: tag-vip; " \
           "keep [keep = true]: (no steps); default: small; then 'out'" in lines


def test_the_diagram_draws_the_branches():
    from flownb.display import flow_svg, flow_text
    flow = load(SPEC)
    svg = flow_svg(flow)
    assert "route by-size — branches" in svg and "big: total &gt; {{ limit }}" in svg
    assert "every branch rejoins at out" in svg and "keep: keep = true (no steps)" in svg
    assert svg.count("<rect") == 1 + 3 + 4  # trigger, the main line, the 4 branch steps
    assert "by-size (route, all: big: tag-big (mapping) → note-big (mapping) | vip: tag-vip (mapping) | " \
           "keep: (no steps) | default: small (mapping))" in flow_text(flow)
    assert isinstance(Flow.model_validate(flow.spec()), Flow)
