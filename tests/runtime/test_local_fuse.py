"""Fused stages on the embedded runtime (docs/local.md, "Fused stages"): the same outputs, retries and
dead letters per step as one step at a time, committed once per stage."""

from __future__ import annotations

import flownb
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.runtime import VirtualClock, stages

SOURCE = '''
def touch(body, ctx):
    body["seen"] = body.get("seen", 0) + 1      # changed in place before failing: must not leak
    if body["id"] % 7 == 0:
        raise ValueError("seven")
    if body["id"] % 5 == 0:                     # retried with the body as received, then dead
        raise ConnectionError("try again")
    return body
'''


def _flow() -> flownb.Flow:
    return flownb.Flow(name="fuse", trigger=flownb.step("in", "webhook", token_env="FUSE_TOKEN"), steps=[
        flownb.step("shape", "mapping", fields={"id": "id", "double": "id * 2"}),
        flownb.step("odd", "filter", condition="id % 3 != 0"),
        flownb.step("touch", "python", source=SOURCE, function="touch",
                    retry={"max_attempts": 3, "initial": "1s"}),
        flownb.step("wrap", "mapping", expression='{"id": id, "total": double + 1}'),
    ])


def _run(fuse: bool):
    rt = LocalRuntime(_flow(), None, memory=True, clock=VirtualClock(), record=True, fuse=fuse)
    try:
        rt.feed({"id": i} for i in range(1, 101))
        summary = rt.drain()
        dead = sorted((d.step, d.message.body["id"], d.message.body.get("seen"), d.error.type)
                      for d in rt.dead_letters())
        out = sorted(b["id"] for b in rt.recorded["wrap"])
        counts = {k: (v.inputs, v.outputs, v.retried, v.dead) for k, v in summary.steps.items()}
        return out, dead, counts, [[r.step.name for r in g] for g in stages(list(rt.runners.values()),
                                                                             fuse=fuse)]
    finally:
        rt.close()


def test_a_fused_stage_gives_the_rows_dead_letters_and_counts_of_one_step_at_a_time():
    fused, plain = _run(True), _run(False)
    assert fused[3] == [["shape", "odd", "touch", "wrap"]]
    assert plain[3] == [["shape"], ["odd"], ["touch"], ["wrap"]]
    assert fused[:3] == plain[:3]
    out, dead, counts, _ = fused
    assert out == [i for i in range(1, 101) if i % 3 and i % 7 and i % 5]
    # dead letters name the member where the message died, with the body as it received it
    assert dead == sorted([("touch", i, None, "ValueError") for i in range(1, 101) if i % 3 and i % 7 == 0]
                          + [("touch", i, None, "ConnectionError") for i in range(1, 101)
                             if i % 3 and i % 7 and i % 5 == 0])
    assert counts["touch"][2] == 2 * len([i for i in range(1, 101) if i % 3 and i % 5 == 0 and i % 7])


def test_a_retry_inside_a_stage_waits_in_that_steps_queue():
    rt = LocalRuntime(_flow(), None, memory=True, clock=VirtualClock(), fuse=True)
    try:
        rt.feed([{"id": 10}])
        rt.process_step("shape")                     # shape → odd → touch (retry) in one batch
        assert rt.store.depths() == {"touch": 1}     # queued for touch, not for shape
        assert rt.stats["touch"].retried == 1 and rt.stats["wrap"].inputs == 0
        summary = rt.drain()                          # retried at touch twice, then dead there
        assert summary.steps["shape"].inputs == 1 and summary.steps["touch"].inputs == 3
        assert [d.step for d in rt.dead_letters()] == ["touch"] and summary.steps["wrap"].inputs == 0
    finally:
        rt.close()


def test_a_step_with_outside_effects_ends_a_stage():
    flow = flownb.Flow(name="fx", trigger=flownb.step("in", "webhook", token_env="FUSE_TOKEN"), steps=[
        flownb.step("a", "mapping", fields={"id": "id"}),
        flownb.step("w", "csv.write", path="/tmp/never-written.csv"),
        flownb.step("b", "filter", condition="id > 0"),
        flownb.step("c", "mapping", fields={"id": "id"}),
    ])
    rt = LocalRuntime(flow, None, memory=True)
    try:
        assert [[r.step.name for r in g] for g in stages(list(rt.runners.values()))] == [["a", "w"], ["b", "c"]]
    finally:
        rt.close()
