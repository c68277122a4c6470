"""Building pipelines: the graph's shape and every rule checked before a run."""

from __future__ import annotations

import pickle

import pytest

import hetfaas
from hetfaas.pipeline import NO_STATE, SOURCE, Pipeline, PipelineConfigError
from hetfaas.pipeline.graph import default_bound, key_str, parse_key


def f(x):
    return x


def g(x, y):
    return x, y


def test_chain_and_dag_shape():
    p = Pipeline.chain(f, g, name="c")
    assert [s.name for s in p.stages] == ["f", "g"]
    assert p["g"].inputs == ("f",) and p["f"].inputs == (SOURCE,)
    d = Pipeline("d")
    a = d.stage(f, name="a")
    d.stage(f, name="b", inputs=a)
    d.stage(f, name="c", inputs=[a])
    d.stage(g, name="j", inputs=["b", "c"])
    assert d.consumers("a") == ["b", "c"]  # a broadcast
    assert d.edges() == [(SOURCE, "a"), ("a", "b"), ("a", "c"), ("b", "j"), ("c", "j")]
    assert d.sinks() == ["j"]
    assert d.levels() == {SOURCE: 0, "a": 1, "b": 2, "c": 2, "j": 3}


def test_keys_and_depth():
    assert key_str((3, 1)) == "3.1" and parse_key("3.1") == (3, 1)
    with pytest.raises(PipelineConfigError, match="dotted integers"):
        parse_key("x")
    p = Pipeline()
    p.stage(f, name="shard", fanout=4)
    p.stage(f, name="m")
    assert p.depth(SOURCE) == 1 and p.depth("shard") == 2 and p.depth("m") == 2


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda p: p.stage(f, name="source"), "taken"),
        (lambda p: (p.stage(f), p.stage(f)), "taken"),
        (lambda p: p.stage(f, inputs=["nope"]), "unknown input 'nope'"),
        (lambda p: p.stage(f, inputs=[]), "inputs is empty"),
        (lambda p: p.stage(f, fanout=0), "fanout"),
        (lambda p: p.stage(f, concurrency=(3, 2)), "min 3 > max 2"),
        (lambda p: p.stage(f, concurrency="x"), "concurrency"),
        (lambda p: p.stage(f, state=0, concurrency=2), "stateful"),
        (lambda p: p.stage(f, resources={"cpus": 1}), "hetfaas.Resources"),
        (lambda p: p.stage(f, retry=3), "hetfaas.Retry"),
        (lambda p: p.stage(42), "callable"),
        (
            lambda p: (p.stage(f, name="a", fanout=2), p.stage(g, name="j", inputs=["a", SOURCE])),
            "different depths",
        ),
    ],
)
def test_malformed_graphs_are_refused_when_built(build, match):
    with pytest.raises(PipelineConfigError, match=match):
        build(Pipeline())


def test_bounds():
    p = Pipeline(max_in_flight=3)
    p.stage(f, name="a", fanout=4)
    p.stage(f, name="b")
    with pytest.raises(PipelineConfigError, match="below 'a''s fanout 4"):
        p.bound("a", "b")
    q = Pipeline()
    q.stage(f, name="a", fanout=4)
    q.stage(f, name="b", concurrency=(1, 6), max_in_flight=None)
    assert q.bound("a", "b") == default_bound(4, 6) == 12
    assert q.bound(SOURCE, "a") == 8
    with pytest.raises(PipelineConfigError, match="max_in_flight"):
        Pipeline(max_in_flight=0)


def test_stage_options():
    p = Pipeline()
    s = p.stage(f, resources=hetfaas.Resources(cpus=2), state=1.5)
    assert s.stateful and s.concurrency == (1, 1)  # a stateful stage runs one call at a time
    assert s.resources.cpus == 2
    t = p.stage(hetfaas.idempotent(g), name="g", inputs=[SOURCE])
    assert t.policy == hetfaas.Retry() and not t.stateful
    assert p.stage(f, name="h", retry=hetfaas.Retry(max_attempts=2)).policy.max_attempts == 2
    assert pickle.loads(pickle.dumps(NO_STATE)) is NO_STATE
    assert "h<-g" in repr(p)


def test_package_exports_are_complete_and_lazy():
    import hetfaas.pipeline as pl

    for name in pl.__all__:
        assert getattr(pl, name) is not None, name
    assert hetfaas.Pipeline is pl.Pipeline and callable(pl.run)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pl.nope  # noqa: B018
