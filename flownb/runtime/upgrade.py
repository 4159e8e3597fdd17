"""Changing a running flow without stranding its messages: ``flownb plan`` and ``flownb upgrade``.

A step's queue is named after the step, so renaming or removing a step leaves the messages queued
for the old name where no worker looks: silently, for ever. :func:`make_plan` compares two specs of
one flow — steps added, removed and renamed (given with ``--rename old=new``, or guessed when a
removed and an added step have the same position and component), retry policies changed (their
delay queues change), whether the trigger's saved cursor still applies — and, given the state
directory or the broker, how many messages each old step holds. :func:`upgrade` moves the messages
of renamed steps to their new names (embedded runtime: one transaction; RabbitMQ: consumed from
the old queues and published to the new ones with confirms, each acked only after its confirm)
and removes the old queues once empty. ``flownb run`` refuses to start (exit 2) while its state
holds messages for a step the spec does not have (:func:`check_no_orphans`); so does ``flownb
worker``: the broker keeps a manifest of the step names of the spec that last started a worker
(:func:`check_broker_manifest`), which is how a worker of a new spec knows the old names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UpgradeError
from ..flow import Flow

__all__ = ["Plan", "make_plan", "upgrade", "check_no_orphans", "check_broker_manifest", "local_depths",
           "local_specs"]

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What changing ``old`` into ``new`` does to the flow's queues and state."""

    old: Flow
    new: Flow
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)    # old name → new name
    guessed: dict[str, str] = field(default_factory=dict)    # renames guessed, not confirmed
    retry_changed: list[str] = field(default_factory=list)   # kept steps whose delay queues change
    cursor: str = "kept"
    #: messages per old step (``queued`` includes retries; ``dead`` the dead letters), when known
    depths: dict[str, dict[str, int]] | None = None
    #: queued messages per ``meta.spec`` of the spec that produced them ("" for messages of a flownb
    #: that did not stamp it); None when not counted (RabbitMQ: counting would take every message
    #: off its queue and back)
    specs: dict[str, int] | None = None
    #: set when the old spec itself is not at hand and the plan was made from what the runtime kept of
    #: it (:func:`kept_plan`): where that is ("the broker's manifest"); ``old`` is then the new spec
    source: str | None = None
    #: with ``source``: the hash of the spec that last ran, when recorded ("" when not)
    old_hash: str = ""

    def held(self, step: str) -> int:
        d = (self.depths or {}).get(step) or {}
        return d.get("queued", 0) + d.get("dead", 0)

    @property
    def orphaned(self) -> dict[str, int]:
        """Removed steps (not renamed) that hold messages: what the change would strand."""
        return {s: self.held(s) for s in self.removed if s not in self.renamed and self.held(s)}

    def lines(self) -> list[str]:
        out = [f"plan for flow '{self.new.name}'" + (f" (from {self.source}):" if self.source else ":")]
        for s in self.added:
            if s not in self.renamed.values():
                where = self.new.branch_of(s)
                branch = f"; branch '{where[1]}' of route '{where[0]}'" if where else ""
                out.append(f"  + step '{s}' (new, empty queues{branch})")
        for old, new in self.renamed.items():
            out.append(f"  ~ step '{old}' → '{new}': {self.held(old):,} message(s) move" if self.depths is not None
                       else f"  ~ step '{old}' → '{new}'")
        for old, new in self.guessed.items():
            out.append(f"  ? step '{old}' looks renamed to '{new}' (same position and component): confirm "
                       f"with --rename {old}={new}")
        for s in self.removed:
            if s in self.renamed:
                continue
            held = f": {self.held(s):,} message(s) would be stranded" if self.held(s) else ""
            out.append(f"  - step '{s}' removed{held}")
        for s in self.retry_changed:
            out.append(f"  * step '{s}': retry policy changed (its delay queues are declared anew; "
                       f"waiting retries keep their old delay)")
        out.append(f"  trigger '{self.new.trigger.name}': cursor {self.cursor}")
        if self.source is None and self.old.topology != self.new.topology:
            out.append(f"  ! topology: {self.old.topology or 'not set'} → {self.new.topology or 'not set'}: on "
                       f"RabbitMQ a queue's type cannot change, and a worker stops with a TopologyError where "
                       f"the step queues exist as the other type; drain and delete them first, or keep the "
                       f"old topology (docs/rabbitmq.md, \"Classic queues of an older flownb\")")
        if len(out) == 2 and self.cursor == "kept":
            out.insert(1, "  no change to steps or queues")
        out.extend(f"  {line}" for line in route_lines(self.new))
        old_hash, new_hash = self.old_hash if self.source else self.old.spec_hash(), self.new.spec_hash()
        if not old_hash:
            out.append(f"  spec {new_hash} (the spec that ran before is not recorded)")
        else:
            out.append(f"  spec {old_hash} → {new_hash}" if old_hash != new_hash
                       else f"  spec {new_hash} (unchanged)")
        if self.specs is not None:  # the messages carry the short form (meta.spec)
            other = {h: n for h, n in self.specs.items() if h != self.new.spec_hash(short=True)}
            if other:
                most = sorted(other.items(), key=lambda x: (-x[1], x[0]))
                listing = ", ".join(f"{h or 'unstamped'}: {n:,}" for h, n in most)
                out.append(f"  {sum(other.values()):,} of {sum(self.specs.values()):,} queued message(s) were "
                           f"produced by another spec version ({listing}); the new spec's steps will process them")
            else:
                out.append(f"  {sum(self.specs.values()):,} queued message(s), all produced by the new spec")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def route_lines(flow: Flow) -> list[str]:
    """One line per route step: its mode, each branch with its condition and its steps (each with
    its own queues), the default, and where the branches rejoin."""
    out = []
    links = flow.links()
    for s in flow.steps:
        if s.route is None:
            continue
        conds = {b.name: b.when for b in s.route.branches}
        parts = []
        for b, chain in s.route.chains():
            steps = " → ".join(c.name for c in chain) or "(no steps)"
            parts.append(f"{b} [{conds[b]}]: {steps}" if b in conds else f"{b}: {steps}")
        if s.route.default is None:
            parts.append("unmatched: filtered")
        then = links[s.name]
        out.append(f"route '{s.name}' (mode {s.route.mode}): " + "; ".join(parts)
                   + f"; then {repr(then) if then else 'the end of the flow'}")
    return out


def _parse_renames(renames: dict[str, str] | None, old: Flow, new: Flow) -> dict[str, str]:
    renames = dict(renames or {})
    old_names = {s.name for s in old.all_steps}
    new_names = {s.name for s in new.all_steps}
    for a, b in renames.items():
        if a not in old_names:
            raise UpgradeError(f"--rename {a}={b}: the old spec has no step '{a}' (its steps: "
                               f"{', '.join(sorted(old_names))})")
        if b not in new_names:
            raise UpgradeError(f"--rename {a}={b}: the new spec has no step '{b}' (its steps: "
                               f"{', '.join(sorted(new_names))})")
        if b in old_names and b != a:
            raise UpgradeError(f"--rename {a}={b}: '{b}' is a step of the old spec too; rename into a new name")
    return renames


def make_plan(old: Flow, new: Flow, renames: dict[str, str] | None = None, *,
              depths: dict[str, dict[str, int]] | None = None) -> Plan:
    if old.name != new.name:
        raise UpgradeError(f"the specs are of two flows ('{old.name}', '{new.name}'): a flow's queues are "
                           f"named after it, so renaming a flow is a new flow; run both side by side")
    old, new = old.resolved(), new.resolved()
    confirmed = _parse_renames(renames, old, new)
    plan = Plan(old, new, depths=depths)
    old_steps = {s.name: s for s in old.actions}
    new_steps = {s.name: s for s in new.actions}
    plan.removed = [s for s in old_steps if s not in new_steps]
    plan.added = [s for s in new_steps if s not in old_steps]
    plan.renamed = {a: b for a, b in confirmed.items() if a in old_steps}
    old_order, new_order = list(old_steps), list(new_steps)
    for a in plan.removed:
        if a in plan.renamed:
            continue
        i = old_order.index(a)
        b = new_order[i] if i < len(new_order) else None
        if b in plan.added and b not in plan.renamed.values() and \
                old_steps[a].component == new_steps[b].component:
            plan.guessed[a] = b
    plan.retry_changed = [s for s in old_steps if s in new_steps
                          and old_steps[s].retry_policy != new_steps[s].retry_policy]
    ot, nt = old.trigger, new.trigger
    trigger_renamed = confirmed.get(ot.name) == nt.name
    if ot.name != nt.name and not trigger_renamed:
        plan.cursor = (f"lost: the trigger is renamed '{ot.name}' → '{nt.name}' and its state is kept under "
                       f"its name; pass --rename {ot.name}={nt.name} to keep it, or the source is read again "
                       f"from the beginning")
    elif ot.component != nt.component:
        plan.cursor = f"reset: the trigger changes from {ot.component} to {nt.component}"
    else:
        changed = sorted(k for k in ("cursor", "key", "table", "query", "path", "url", "items")
                         if ot.config.get(k) != nt.config.get(k))
        if changed:
            plan.cursor = (f"kept, but check it: {', '.join(changed)} changed, so the saved cursor may not "
                           f"fit the new source")
        elif trigger_renamed:
            plan.cursor = f"kept (moved from '{ot.name}' to '{nt.name}')"
    return plan


# -- the embedded runtime -------------------------------------------------------------------------

def local_depths(state_dir: Path, flow: str) -> dict[str, dict[str, int]] | None:
    """Messages per step in a state directory (None when it holds no database for the flow)."""
    if not (Path(state_dir) / f"{flow}.db").exists():
        return None
    from .local.store import open_state
    store = open_state(Path(state_dir), flow, create=False)
    try:
        return _store_depths(store)
    finally:
        store.close()


def local_specs(state_dir: Path, flow: str) -> dict[str, int] | None:
    """Queued messages (retries included) per ``meta.spec`` in a state directory (None without a
    database): one scan of the queue table, SQLite's JSON functions reading the payloads."""
    if not (Path(state_dir) / f"{flow}.db").exists():
        return None
    from .local.store import open_state
    store = open_state(Path(state_dir), flow, create=False)
    try:
        return _queued_specs(store)
    finally:
        store.close()


def _store_depths(store) -> dict[str, dict[str, int]]:
    out = {step: {"queued": n, "dead": 0} for step, n in store.depths().items()}
    with store.lock:
        for step, n in store.conn.execute("SELECT step, count(*) FROM dead GROUP BY step"):
            out.setdefault(step, {"queued": 0, "dead": 0})["dead"] = n
    return out


def kept_plan(flow: Flow, old_steps: list[str], held: dict[str, int], *, source: str, old_hash: str = "",
              specs: dict[str, int] | None = None) -> Plan:
    """The plan of changing what last ran into ``flow`` when the old spec itself is not at hand, only
    what the runtime kept of it (``source``): the step names it had (``old_steps``; the steps that hold
    messages when nothing more is kept) and the messages ``held`` per step. Renames cannot be guessed
    (that takes the old spec's components): ``flownb plan OLD.yaml NEW.yaml`` shows them."""
    new = flow.resolved()
    plan = Plan(new, new, depths={s: {"queued": n, "dead": 0} for s, n in held.items()}, source=source,
                old_hash=old_hash, specs=specs)
    plan.cursor = "not compared (the old spec is not at hand; 'flownb plan OLD.yaml NEW.yaml' compares it)"
    new_steps = [s.name for s in new.actions]
    plan.removed = [s for s in old_steps if s not in new_steps]
    if source != "the state directory":  # the state keeps no step list: only the steps holding messages
        plan.added = [s for s in new_steps if s not in old_steps]
    return plan


def _stranding(held: dict[str, int], who: str, command: str, plan: Plan) -> UpgradeError:
    """The refusal of ``run``/``worker`` while ``held`` (step → messages) waits for steps the spec lacks;
    ``who`` starts the sentence ("RabbitMQ holds messages of flow 'f'"); the ``plan`` follows it."""
    listing = ", ".join(f"'{s}': {n:,}" for s, n in sorted(held.items()))
    return UpgradeError(
        f"{who} for step(s) this spec does not have ({listing}); "
        f"starting would strand them. If a step was renamed, move them with: flownb upgrade OLD.yaml "
        f"{command} --rename OLD_NAME=NEW_NAME (see 'flownb plan OLD.yaml NEW.yaml'); or run the old spec "
        f"until those queues are empty.\n" + "\n".join(plan.lines()))


def check_no_orphans(flow: Flow, store, command: str) -> None:
    """Refuse to run ``flow`` while ``store`` holds queued messages for steps it does not have."""
    steps = {s.name for s in flow.actions}
    held = {s: n for s, n in store.depths().items() if s not in steps and n}
    if held:
        plan = kept_plan(flow, sorted(held), held, source="the state directory", specs=_queued_specs(store))
        raise _stranding(held, f"the state of flow '{flow.name}' holds messages", command, plan)


def _queued_specs(store) -> dict[str, int]:
    """Queued messages per ``meta.spec`` in an open state store (as :func:`local_specs`)."""
    with store.lock:
        rows = store.conn.execute(
            "SELECT CASE WHEN json_valid(CAST(payload AS TEXT)) "
            "THEN json_extract(CAST(payload AS TEXT), '$.meta.spec') END, count(*) FROM queue GROUP BY 1")
        return {str(h or ""): n for h, n in rows}


def _upgrade_local(plan: Plan, state_dir: Path) -> dict[str, int]:
    from .local.store import open_state
    store = open_state(Path(state_dir), plan.new.name, create=False)
    moved: dict[str, int] = {}
    try:
        with store.transaction() as c:
            for a, b in plan.renamed.items():
                q = c.execute("UPDATE queue SET step=? WHERE step=?", (b, a)).rowcount
                d = c.execute("UPDATE dead SET step=? WHERE step=?", (b, a)).rowcount
                moved[a] = q + d
            ot, nt = plan.old.trigger.name, plan.new.trigger.name
            if plan.renamed.get(ot) == nt:
                c.execute("UPDATE trigger_state SET trigger=? WHERE trigger=?", (nt, ot))
    finally:
        store.close()
    return moved


# -- RabbitMQ -------------------------------------------------------------------------------------

def amqp_depths(flow: Flow, broker: str) -> dict[str, dict[str, int]]:
    from .amqp.topology import queue_depths
    return {s: {"queued": d["ready"] + d["retry"], "dead": d["dead"]}
            for s, d in queue_depths(flow.resolved(), broker).items()}


def _manifest(ch, flow: str, kind: str) -> dict | None:
    import orjson

    from .amqp import names
    from .amqp.topology import declare_kept
    q = names.manifest_queue(flow)
    # a register: the newest manifest pushes the old one out (drop-head); replicated with quorum queues
    # (one an older flownb declared classic is kept), so a worker starts while any one node is down
    if kind == "quorum":
        declare_kept(ch, q, {"x-max-length": 1})
    else:
        ch.queue_declare(q, durable=True, arguments={"x-max-length": 1})
    method, _, body = ch.basic_get(q, auto_ack=False)
    if method is None:
        return None
    ch.basic_nack(method.delivery_tag, requeue=True)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _record_manifest(ch, flow: Flow) -> None:
    import orjson

    from .amqp import names
    from .amqp.publish import PERSISTENT
    from .amqp.topology import retry_levels
    # the retry levels name each step's delay queues, which a later spec cannot derive
    manifest = {"steps": [s.name for s in flow.actions], "spec_hash": flow.spec_hash(),
                "retry": {s.name: retry_levels(s.retry_policy) for s in flow.actions}}
    ch.basic_publish("", names.manifest_queue(flow.name), orjson.dumps(manifest), PERSISTENT)


def check_broker_manifest(flow: Flow, broker: str, command: str) -> None:
    """Refuse to start a worker of ``flow`` while a step that the last started spec had, and this
    one lacks, still holds messages on the broker; otherwise record this spec's steps."""
    from ..errors import BrokerError
    from .amqp import names
    from .amqp.topology import connect, message_count, queue_type, suspect_queue
    try:
        conn = connect(broker, name="flownb manifest")
    except BrokerError as exc:  # the worker itself waits for the broker with back-off, as before
        log.warning("flow '%s': the step manifest was not checked (%s); a renamed step's messages are "
                    "not looked for", flow.name, exc)
        return
    try:
        ch = conn.channel()
        known = _manifest(ch, flow.name, queue_type(flow)) or {}
        steps = {s.name for s in flow.actions}
        held = {}
        for s in known.get("steps") or []:
            if s in steps or not isinstance(s, str):
                continue
            delays = [names.retry_queue(flow.name, s, lvl) for lvl in (known.get("retry") or {}).get(s, [])]
            n = sum(message_count(conn, q) for q in (names.step_queue(flow.name, s), suspect_queue(flow.name, s),
                                                      names.retry_ready_queue(flow.name, s), *delays))
            if n:
                held[s] = n
        if held:
            old_steps = [s for s in known.get("steps") or [] if isinstance(s, str)]
            plan = kept_plan(flow, old_steps, held, source="the broker's manifest of the spec that last started "
                             "a worker", old_hash=str(known.get("spec_hash") or ""))
            raise _stranding(held, f"RabbitMQ holds messages of flow '{flow.name}'", f"{command} --broker URL",
                             plan)
        if known.get("spec_hash") != flow.spec_hash():
            _record_manifest(ch, flow)
    finally:
        if conn.is_open:
            conn.close()


def _upgrade_amqp(plan: Plan, broker: str) -> dict[str, int]:
    from .amqp import names
    from .amqp.topology import connect, declare_flow, queue_type, retry_levels, suspect_queue
    conn = connect(broker, name="flownb-upgrade")
    kind = queue_type(plan.new)
    moved: dict[str, int] = {}
    try:
        declare_flow(conn.channel(), plan.new)  # the new topology first: moved messages land in declared queues
        f = plan.new.name
        old_steps = {s.name: s for s in plan.old.actions}
        for a, b in plan.renamed.items():
            if a not in old_steps:
                continue
            sources = [names.step_queue(f, a), suspect_queue(f, a), names.retry_ready_queue(f, a),
                       *(names.retry_queue(f, a, lvl) for lvl in retry_levels(old_steps[a].retry_policy))]
            n = sum(_move_queue(conn, q, names.exchange(f), b) for q in sources)
            n += _move_queue(conn, names.dead_letter_queue(f, a), "", names.dead_letter_queue(f, b))
            moved[a] = n
        for a in plan.removed:  # removed, not renamed: upgrade() refused while they held messages
            if a in plan.renamed or a not in old_steps:
                continue
            queues = [names.step_queue(f, a), suspect_queue(f, a), names.retry_ready_queue(f, a),
                      *(names.retry_queue(f, a, lvl) for lvl in retry_levels(old_steps[a].retry_policy)),
                      names.dead_letter_queue(f, a)]
            kept = [q for q in queues if not _delete_if_empty(conn, q)]
            if kept:
                log.warning("flow '%s': the queues of the removed step '%s' were kept (%s): they are consumed "
                            "or hold messages again; stop the old spec's workers and run 'flownb upgrade' again",
                            f, a, ", ".join(kept))
            else:
                log.info("flow '%s': removed the queues of step '%s'", f, a)
        ch = conn.channel()
        _manifest(ch, f, kind)  # declares the register
        _record_manifest(ch, plan.new)
    finally:
        if conn.is_open:
            conn.close()
    return moved


def _move_queue(conn, queue: str, exchange: str, routing_key: str) -> int:
    """Move every message of ``queue``: publish it (confirmed) to ``exchange``/``routing_key``, ack it
    after the confirm; then delete the queue if it is empty. A queue that does not exist moves 0."""
    import pika

    from .amqp.publish import redelivered_props
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:  # no such queue: nothing to move
        return 0
    ch.confirm_delivery()
    n = 0
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            break
        headers = {k: v for k, v in (props.headers or {}).items() if k != "x-delivery-count"}
        # confirm mode: basic_publish returns once the broker confirmed it (raises on a nack)
        ch.basic_publish(exchange, routing_key, body, redelivered_props(props, headers))
        ch.basic_ack(method.delivery_tag)
        n += 1
    if ch.is_open:
        ch.close()
    _delete_if_empty(conn, queue)
    return n


def _delete_if_empty(conn, queue: str) -> bool:
    """Delete ``queue`` if it is empty and nobody consumes it; whether it is gone (a queue that does
    not exist is). Checked with a passive declare, then deleted, for either queue type: RabbitMQ
    refuses queue.delete if-empty on a quorum queue (540, closing the connection), and the type of
    an old queue is not always the one the new spec (or this machine's FLOWNB_QUEUE_TYPE) names —
    the old spec's workers are stopped during an upgrade, so nothing is published in between."""
    import pika
    ch = conn.channel()
    try:
        ok = ch.queue_declare(queue, passive=True).method
        if ok.message_count or ok.consumer_count:
            return False
        ch.queue_delete(queue)
    except pika.exceptions.ChannelClosedByBroker as exc:  # no such queue (404), or published to meanwhile
        return exc.reply_code == 404
    finally:
        if ch.is_open:
            ch.close()
    return True


def upgrade(old: Flow, new: Flow, renames: dict[str, str] | None = None, *,
            state_dir: Path | str | None = None, broker: str | None = None) -> tuple[Plan, dict[str, int]]:
    """Apply the plan: move the renamed steps' messages; refuse when the change would strand
    messages of removed steps or leaves guessed renames unconfirmed."""
    if (state_dir is None) == (broker is None):
        raise UpgradeError("give exactly one of --state-dir (embedded runtime) or --broker (RabbitMQ)")
    if state_dir is not None:
        depths = local_depths(Path(state_dir), new.name)
    else:
        assert broker is not None  # exactly one of the two, checked above
        depths = amqp_depths(old, broker)
    plan = make_plan(old, new, renames, depths=depths)
    if plan.guessed:
        raise UpgradeError("unconfirmed renames:\n" + "\n".join(plan.lines()[1:]))
    if plan.orphaned:
        listing = ", ".join(f"'{s}': {n:,}" for s, n in plan.orphaned.items())
        raise UpgradeError(f"removing step(s) {listing} would strand their messages: run the old spec until "
                           f"they are processed, or rename them into a step of the new spec with --rename")
    if state_dir is not None and depths is None:
        return plan, {}
    if state_dir is not None:
        return plan, _upgrade_local(plan, Path(state_dir))
    assert broker is not None
    return plan, _upgrade_amqp(plan, broker)
