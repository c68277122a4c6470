"""``hetfaas bench ensemble``: the compute is seeded and order-proof, and a short CI-scale run
through real pipelines keeps its properties (bound, item counts, shared preprocessing far
cheaper than private, the same weights as one process)."""

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from hetfaas.bench import ensemble, ensemble_report
from hetfaas.bench import ensemble_model as em
from hetfaas.exceptions import ConfigurationError

DATA, PREP = em.DataSpec(), em.PrepSpec()


def test_split_is_fixed_80_20_and_batches_shard_each_epoch():
    d = em.load_data(DATA)
    assert len(d.y_train) == 1437 and len(d.y_test) == 360 and d.classes == 10
    plan = em.batch_plan(DATA, PREP, 0, 2, 64)
    assert len(plan) == 2 * 23 and [b.seq for b in plan] == list(range(46))
    ids = np.concatenate([em.preprocess(b).ids for b in plan[:23]])
    assert sorted(ids.tolist()) == list(range(1437))  # one epoch: every example once


def test_preprocessing_is_seeded_and_a_private_stream_matches_the_shared_one():
    spec = em.batch_plan(DATA, PREP, 3, 1, 64)[5]
    a, b = em.preprocess(spec), em.preprocess(spec)
    assert a.x.shape == (64, 256) and a.x.dtype == np.float32
    assert np.array_equal(a.x, b.x)
    other = em.preprocess(spec._replace(seed=4))
    assert not np.array_equal(a.x, other.x)
    member = em.MemberSpec("m", 32, seed=7, bag=0.5)
    mine = em.preprocess(spec, member)
    keep = em.bag_mask(7, 0.5, len(em.load_data(DATA).y_train))[a.ids]
    assert 0 < len(mine.ids) < 64
    assert np.array_equal(mine.ids, a.ids[keep]) and np.array_equal(mine.x, a.x[keep])


def test_a_member_holds_back_early_batches_and_trains_in_stream_order():
    batches = [em.preprocess(s) for s in em.batch_plan(DATA, PREP, 0, 1, 64)[:4]]
    spec = em.MemberSpec("m", 16, seed=1, bag=0.5)

    def fresh():
        return em.init_member(spec, 256, 10, 1437)

    ordered = fresh()
    for b in batches:
        ordered, _ = em.train_member(ordered, b)
    shuffled = fresh()
    summaries = []
    for i in (2, 0, 3, 1):
        shuffled, out = em.train_member(shuffled, batches[i])
        summaries.append(out["applied"])
    assert summaries == [[], [0], [], [1, 2, 3]]
    assert shuffled["next"] == 4 and not shuffled["pending"]
    for p, q in zip(ordered["params"], shuffled["params"], strict=True):
        assert np.array_equal(p.numpy(), q.numpy())
    assert not np.array_equal(ordered["params"][0].numpy(), fresh()["params"][0].numpy())


def test_soft_vote_and_accuracy():
    y = np.array([0, 1, 1])
    p1 = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])
    assert em.accuracy(p1, y) == pytest.approx(2 / 3) and em.accuracy(p2, y) == pytest.approx(2 / 3)
    assert em.accuracy(em.soft_vote([p1, p2]), y) == 1.0


def test_steps_even_out_members():
    assert ensemble.steps_for([0.001, 0.002, 0.004]) == [4, 2, 1]
    assert ensemble.steps_for([0.001, 0.1]) == [ensemble.MAX_STEPS, 1]


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """A short CI-scale run: K=4 members, 1 epoch of digits, both modes and the baseline."""
    out = tmp_path_factory.mktemp("ensemble")
    cfg = replace(ensemble.SCALES["ci"], epochs=1)
    res = ensemble.run_ensemble(cfg, out, log=lambda m: None)
    res["command_s"] = res["run_s"]
    res["targets"] = ensemble_report.evaluate_targets(res)
    return res, out


def test_ci_run_keeps_the_bound_and_counts_every_item(ci_run):
    res, _ = ci_run
    row = res["seeds"][0]
    n = row["batches"]
    assert n == 23 and res["members"] == 4
    for mode in ("shared", "private"):
        m = row["modes"][mode]
        assert m["items_ok"] and m["bound_ok"] and m["in_order"]
        assert {s["items"] for s in m["stages"].values()} == {n}
        assert all(e["peak_in_flight"] <= e["bound"] == 4 for e in m["edges"])
        assert all(e["items"] == n for e in m["edges"])
    assert set(row["modes"]["shared"]["stages"]) == {"pre", "m0", "m1", "m2", "m3"}
    assert len(row["modes"]["private"]["stages"]) == 8
    assert row["modes"]["private"]["prep_calls"] == 4 * n


def test_ci_run_shares_preprocessing_and_matches_one_process(ci_run):
    res, _ = ci_run
    row = res["seeds"][0]
    # CPU-seconds of the workers: private preprocesses each batch four times, shared once
    assert row["cpu_ratio"] > 2.5
    assert row["prep_vs_step"] > 3.0
    for mode in ("shared", "private"):
        m = row["modes"][mode]
        assert m["max_weight_diff_vs_baseline"] == 0.0
        assert m["accuracy"]["members"] == row["baseline"]["accuracy"]["members"]
    acc = row["modes"]["shared"]["accuracy"]
    assert min(acc["members"]) > 0.5  # trained: chance is 0.1


def test_ci_run_report_json_and_timelines(ci_run):
    res, out = ci_run
    text = ensemble_report.format_report(res)
    assert "| shared |" in text and "| private |" in text and "| single process |" in text
    assert "in-flight items never above the bound: **met**" in text
    data = json.loads(json.dumps(ensemble_report.plain(res), default=str))
    stats = data["seeds"][0]["modes"]["shared"]["pipeline_stats"]
    assert stats["items_in"] == 23 and len(stats["tasks"]) == 5 * 23
    for mode in ("shared", "private"):
        png = out / f"ensemble_timeline_{mode}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--modes", "both"], "--modes"),
        (["--bag", "0"], "--bag"),
        (["--epochs", "0"], "--epochs"),
        (["--widths", ""], "--widths"),
        (["--samples", "100"], "--samples"),
    ],
)
def test_bad_options(argv, match):
    parser = argparse.ArgumentParser()
    ensemble.add_arguments(parser)
    with pytest.raises(ConfigurationError, match=match):
        ensemble.config_from(parser.parse_args(argv))


def test_options_override_the_scale():
    parser = argparse.ArgumentParser()
    ensemble.add_arguments(parser)
    args = parser.parse_args(["--scale", "digits", "--seeds", "4", "5", "--widths", "8,16"])
    cfg = ensemble.config_from(args)
    assert cfg.seeds == (4, 5) and cfg.widths == (8, 16) and cfg.bag == 0.5 and cfg.epochs == 12


def test_generated_data_set_is_seeded_and_preprocessed_like_digits():
    spec = em.DataSpec("synthetic", 300, 16, seed=1)
    d = em.load_data(spec)
    assert d.x_train.shape == (240, 16, 16) and d.classes == 10
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    x, y = em.make_synthetic(300, 16, seed=1)
    assert set(np.unique(y).tolist()) <= set(range(10))
    assert np.array_equal(x, em.make_synthetic(300, 16, seed=1)[0])
    assert not np.array_equal(x, em.make_synthetic(300, 16, seed=2)[0])
    batch = em.preprocess(em.batch_plan(spec, em.PrepSpec(upsample=1), 0, 1, 64)[0])
    assert batch.x.shape == (64, 256) and abs(float(batch.x.mean())) < 0.5


def test_balancing_measures_each_member_in_a_worker():
    import hetfaas

    cfg = ensemble.SCALES["ci"]
    specs = [em.MemberSpec("m0", 8), em.MemberSpec("m1", 2048)]
    with hetfaas.Executor() as ex:
        step_s = ensemble.balance_steps(ex, cfg, specs, hetfaas.Resources(cpus=1))
    assert len(step_s) == 2 and 0 < step_s[0] < step_s[1]
    assert ensemble.steps_for(step_s)[1] == 1 and ensemble.steps_for(step_s)[0] > 1


def test_the_command_line_knows_the_bench():
    from hetfaas import cli

    args = cli.build_parser().parse_args(["bench", "ensemble", "--scale", "digits"])
    assert args.module == "hetfaas.bench.ensemble" and args.scale == "digits"
