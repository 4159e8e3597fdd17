"""Flow spec: load / save / validate, load(save(flow)) == flow, templates and parameters."""

from __future__ import annotations

import re
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flownb import Flow, RetryPolicy, Step, load, save, step
from flownb.errors import ParameterError, SpecError, SpecSyntaxError
from flownb.flow import from_spec
from flownb.params import Param, coerce

SPEC = textwrap.dedent("""\
    flownb: 1
    name: orders-to-crm
    parameters:
      crm_url: http://localhost:8080
      min_total: 100
    trigger:
      name: new-orders
      component: sql.poll
      config: {url: "sqlite:///shop.db", table: orders, cursor: updated_at, interval: 60s}
    steps:
      - name: to-contact
        component: mapping
        config:
          fields:
            email: $lowercase(customer.email)
            total: $sum(items.(qty * price))
      - name: big-only
        component: filter
        config: {condition: "total > {{ min_total }}"}
      - name: push
        component: http.request
        config: {method: POST, url: "{{ crm_url }}/contacts", limit: "{{ min_total }}"}
        retry: {max_attempts: 8, initial: 2s, max: 10m}
        replicas: 2
""")


def test_load_spec_text_and_file(tmp_path):
    flow = load(SPEC)
    assert flow.name == "orders-to-crm" and flow.trigger.component == "sql.poll"
    assert [s.name for s in flow.steps] == ["to-contact", "big-only", "push"]
    push = flow.step("push")
    assert push.retry == RetryPolicy(max_attempts=8, initial=2.0, max=600.0) and push.replicas == 2
    p = tmp_path / "flow.yaml"
    p.write_text(SPEC)
    assert load(p) == flow and load(str(p)) == flow


def test_save_is_reviewable_yaml_without_defaults(tmp_path):
    flow = load(SPEC)
    text = save(flow, tmp_path / "out.yaml")
    assert (tmp_path / "out.yaml").read_text() == text
    assert text.startswith("flownb: 1\nname: orders-to-crm\n")
    assert "max: 10m" in text and "initial: 2s" in text
    assert "prefetch" not in text and "multiplier" not in text and "description" not in text
    assert load(text) == flow


# -- property: load(save(flow)) == flow ----------------------------------------------------------

slug = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
scalar = st.none() | st.booleans() | st.integers(-2**53, 2**53) | text | st.floats(
    allow_nan=False, allow_infinity=False)
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    text, inner, max_size=3), max_leaves=10)
durations = st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.integers(0, 10**6).map(float)
retry = st.none() | st.builds(RetryPolicy, max_attempts=st.integers(1, 50), initial=durations, max=durations,
                              multiplier=st.floats(1.0, 10.0))


@st.composite
def flows(draw):
    names = draw(st.lists(slug, min_size=1, max_size=5, unique=True))

    def make(name):
        return Step(name=name, component=draw(st.sampled_from(["mapping", "sql.poll", "http.request", "x.y"])),
                    config=draw(st.dictionaries(text, json_value, max_size=4)), retry=draw(retry),
                    replicas=draw(st.integers(1, 5)), prefetch=draw(st.none() | st.integers(1, 1000)))
    return Flow(name=draw(slug), description=draw(text), parameters=draw(st.dictionaries(ident, json_value,
                max_size=4)), requirements=draw(st.lists(text, max_size=2)), trigger=make(names[0]),
                steps=[make(n) for n in names[1:]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows())
def test_load_save_round_trip(flow):
    assert load(save(flow)) == flow


# -- validation errors -----------------------------------------------------------------------------

def test_invalid_yaml_names_line():
    with pytest.raises(SpecSyntaxError, match=r"invalid YAML at line \d+, column \d+"):
        load("name: x\ntrigger: [oops\n")


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.replace("replicas: 2", "replica: 2"), r"step 'push'.*did you mean 'replicas'"),
    (lambda s: s.replace("max_attempts: 8", "max_attempt: 8"), r"did you mean 'max_attempts'"),
    (lambda s: s.replace("name: orders-to-crm", "name: Orders To CRM"), r"field 'name'"),
    (lambda s: s.replace("  - name: big-only", "  - name: push"), r"used twice"),
    (lambda s: s.replace("flownb: 1", "flownb: 2"), r"version 2 is not supported"),
    (lambda s: s.replace("  component: sql.poll\n", ""), r"step 'new-orders'.*required"),
    (lambda s: s.replace("initial: 2s", "initial: soon"), r"not a duration"),
])
def test_spec_errors_name_step_and_field(mutate, match):
    with pytest.raises(SpecError, match=match):
        load(mutate(SPEC))


def test_spec_must_be_a_mapping_and_file_must_exist(tmp_path):
    with pytest.raises(SpecError, match="YAML mapping"):
        from_spec(["a"])
    with pytest.raises(SpecError, match="does not exist"):
        load(tmp_path / "nope.yaml")


# -- parameters and templates -----------------------------------------------------------------------

def test_templates_fill_configs_keeping_types():
    r = load(SPEC).resolved()
    push = r.step("push")
    assert push.config["url"] == "http://localhost:8080/contacts"
    assert push.config["limit"] == 100                      # a whole-string template keeps the type
    assert r.step("big-only").config["condition"] == "total > 100"


def test_overrides_are_coerced_to_the_default_type():
    flow = load(SPEC).with_parameters({"min_total": "250"}, crm_url="https://crm.example")
    assert flow.parameters == {"crm_url": "https://crm.example", "min_total": 250}
    assert flow.resolved().step("push").config["limit"] == 250
    assert load(SPEC).parameters["min_total"] == 100        # a copy: the original is unchanged


@pytest.mark.parametrize("default,value,expected", [
    (1, "7", 7), (1.5, "2", 2.0), (True, "no", False), (False, "yes", True), ([1], "[2, 3]", [2, 3]),
    ({"a": 1}, "{b: 2}", {"b": 2}), ("s", "12", "12"), (None, "x", "x"), (3, 4, 4),
])
def test_coercion(default, value, expected):
    assert coerce(value, Param.of("p", default)) == expected


@pytest.mark.parametrize("default,value", [(1, "many"), (True, "perhaps"), ([1], "{a: 1}"), (2.0, "x")])
def test_coercion_errors(default, value):
    with pytest.raises(ParameterError, match="does not fit the type"):
        coerce(value, Param.of("p", default))


def test_unknown_parameter_lists_known_ones():
    with pytest.raises(ParameterError, match=r"unknown parameter 'min_totl'; did you mean 'min_total'\?.*"
                                             r"known parameters: crm_url, min_total"):
        load(SPEC).with_parameters(min_totl=3)
    bad = load(SPEC.replace("{{ crm_url }}", "{{ crm }}"))
    with pytest.raises(ParameterError, match=r"step 'push'.*'\{\{ crm \}\}' names an unknown parameter.*"
                                             r"crm_url"):
        bad.resolved()


def test_parameter_names_must_be_identifiers():
    with pytest.raises(SpecError, match="must be an identifier"):
        load(SPEC.replace("crm_url: http", "crm-url: http"))


# -- navigation and value-object edits ----------------------------------------------------------------

def test_navigation_and_then_returns_copies():
    flow = load(SPEC)
    assert flow.next_step("new-orders").name == "to-contact"
    assert flow.next_step("push") is None
    with pytest.raises(SpecError, match="did you mean 'push'"):
        flow.step("psuh")
    longer = flow.then(step("log-it", "log", level="debug"))
    assert [s.name for s in longer.steps][-1] == "log-it" and len(flow.steps) == 3
    assert longer.step("log-it").config == {"level": "debug"}
    with pytest.raises(Exception, match="used twice"):
        flow.then(step("push", "log"))


def test_retry_policy_delays():
    p = RetryPolicy(initial="1s", max="10s", multiplier=3)
    assert [p.delay(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 9.0, 10.0]
    assert Step(name="a", component="log").retry_policy == RetryPolicy()


def test_flow_mimebundle_carries_the_spec():
    bundle = load(SPEC)._repr_mimebundle_()
    assert bundle["application/vnd.flownb.flow+json"] == load(SPEC).spec()


# -- relative paths are read from the spec file's folder ---------------------------------------------

FILES_SPEC = textwrap.dedent("""\
    flownb: 1
    name: files
    parameters:
      db: sqlite:///out/orders.db
    trigger:
      name: src
      component: csv.poll
      config: {path: "in/orders-*.csv", cursor: n, interval: 1s}
    steps:
      - name: copy
        component: csv.write
        config: {path: out/copy.csv}
      - name: save
        component: sql.upsert
        config: {url: "{{ db }}", table: orders, key: [n], create: true}
""")


def test_a_spec_file_anchors_its_relative_paths_to_its_folder_when_resolved(tmp_path):
    (tmp_path / "flow.yaml").write_text(FILES_SPEC)
    flow = load(tmp_path / "flow.yaml")
    assert flow.spec_dir == tmp_path.resolve() and load(FILES_SPEC).spec_dir is None
    assert flow == load(FILES_SPEC)  # where the file lies is not part of the spec
    assert flow.step("src").config["path"] == "in/orders-*.csv"  # the model keeps what was written
    r = flow.resolved()
    assert r.spec_dir == flow.spec_dir and r.resolved() == r  # kept by the copy, and idempotent
    assert r.step("src").config["path"] == str(tmp_path.resolve() / "in/orders-*.csv")
    assert r.step("copy").config["path"] == str(tmp_path.resolve() / "out/copy.csv")
    assert r.step("save").config["url"] == f"sqlite:///{tmp_path.resolve()}/out/orders.db"  # after the template
    assert flow.resolved(paths=False).step("src").config["path"] == "in/orders-*.csv"  # what export writes
    assert load(FILES_SPEC).resolved().step("copy").config["path"] == "out/copy.csv"  # no file: the cwd
    assert flow.with_parameters(db="sqlite:///x.db").spec_dir == flow.spec_dir
    assert flow.then(step("show", "log")).resolved().step("copy").config["path"].startswith(str(tmp_path))


@pytest.mark.parametrize(("value", "anchored"), [
    ("orders.csv", "/spec/orders.csv"),
    ("data/*.csv", "/spec/data/*.csv"),
    ("/abs/orders.csv", "/abs/orders.csv"),
    ("~/orders.csv", "~/orders.csv"),
    ("sqlite:///shop.db", "sqlite:////spec/shop.db"),
    ("sqlite:///shop.db?mode=ro", "sqlite:////spec/shop.db?mode=ro"),
    ("sqlite:////var/shop.db", "sqlite:////var/shop.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite://", "sqlite://"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("{{ path }}", "{{ path }}"),
])
def test_anchor_path_touches_only_relative_files(value, anchored):
    from pathlib import Path

    from flownb.flow import anchor_path
    assert anchor_path(value, Path("/spec")) == anchored


def test_flownb_run_from_another_directory_reads_and_writes_beside_the_spec(tmp_path):
    """`flownb run project/flow.yaml` from elsewhere: the csv source, the csv it writes and the SQLite
    database named relatively in the spec are all in project/ — nothing lands in the current directory."""
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "in").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "flow.yaml").write_text(FILES_SPEC)
    (project / "in" / "orders-1.csv").write_text("n,v\n1,a\n2,b\n")
    (project / "in" / "orders-2.csv").write_text("n,v\n3,c\n")
    flownb = str(Path(sys.executable).with_name("flownb"))
    r = subprocess.run([flownb, "run", "../project/flow.yaml", "--state-dir", "state", "--until-idle"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "out" / "copy.csv").read_text().splitlines() == ["n,v", "1,a", "2,b", "3,c"]
    with sqlite3.connect(project / "out" / "orders.db") as db:
        assert db.execute("select n, v from orders order by n").fetchall() == [(1, "a"), (2, "b"), (3, "c")]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["state"]  # only the state dir the command named

    # a source that matches nothing warns, naming the folder it looked in
    (project / "flow.yaml").write_text(FILES_SPEC.replace("in/orders-*.csv", "missing/*.csv"))
    r = subprocess.run([flownb, "run", "../project/flow.yaml", "--state-dir", "state2", "--until-idle"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"csv.poll 'src': no file matches '{project.resolve()}/missing/*.csv'; nothing to read" in r.stderr


def _fuse_flow(fuse: str) -> str:
    return ("name: f\ntrigger: {name: t, component: webhook, config: {token_env: X}}\nsteps:\n"
            "  - {name: a, component: mapping, config: {fields: {x: x}}}\n"
            "  - {name: b, component: filter, config: {condition: x}}\n"
            "  - {name: c, component: mapping, config: {fields: {x: x}}}\n" + fuse + "\n")


def test_fuse_names_consecutive_action_steps_and_round_trips():
    f = load(_fuse_flow("fuse: [a, b]"))
    assert f.fuse == [["a", "b"]] and f.fused_group("b") == ["a", "b"] and f.fused_group("c") == ["c"]
    assert load(f.to_yaml()) == f
    assert load(_fuse_flow("fuse: [[a, b]]")) == f


@pytest.mark.parametrize("fuse,says", [
    ("fuse: [a, c]", "are not consecutive steps in flow order"),
    ("fuse: [a, z]", "no action step 'z'"),
    ("fuse: [a]", "a fused group runs two or more consecutive action steps"),
    ("fuse: [t, a]", "'t' is the trigger"),
    ("fuse: [[a, b], [b, c]]", "step 'b' is in two groups"),
])
def test_a_bad_fuse_is_a_clear_spec_error(fuse, says):
    with pytest.raises(SpecError, match=re.escape(says)):
        load(_fuse_flow(fuse))


@pytest.mark.parametrize("topology", ["classic", "quorum", None])
def test_topology_round_trips_and_is_left_out_when_unset(topology):
    flow = Flow(name="t", trigger=step("h", "webhook"), steps=[step("a", "log")], topology=topology)
    text = flow.to_yaml()
    assert ("topology:" in text) is (topology is not None)
    assert load(text) == flow and load(text).topology == topology


def test_an_unknown_topology_is_refused_with_the_choices():
    text = "flownb: 1\nname: t\ntrigger: {name: h, component: webhook}\ntopology: mirrored\n"
    with pytest.raises(SpecError) as e:
        load(text)
    assert e.value.field == "topology"
    assert str(e.value) == ("field 'topology': spec: topology 'mirrored' is not a queue topology; write 'classic' "
                            "(queues on one broker node) or 'quorum' (queues replicated across a RabbitMQ cluster), "
                            "or leave it out")
