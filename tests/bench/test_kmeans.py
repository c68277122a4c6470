"""``hetfaas bench kmeans`` on a tiny run: the channels' centroids agree with one process."""

import argparse

import numpy as np
import pytest

from hetfaas.bench import kmeans
from hetfaas.exceptions import ConfigurationError


def test_shards_are_fixed_and_higgs_shaped():
    a, b = kmeans.make_shard(0, 100, 4), kmeans.make_shard(0, 100, 4)
    assert a.shape == (100, 28) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, kmeans.make_shard(1, 100, 4))


def test_local_step_counts_every_point():
    shard = kmeans.make_shard(0, 500, 3)
    stats = kmeans.local_step(shard, kmeans.initial_centroids(shard, 3))
    assert stats.shape == (3, 29) and stats[:, 28].sum() == 500
    assert np.allclose(stats[:, :28].sum(0), shard.astype(np.float64).sum(0))


@pytest.mark.parametrize("peers", [2, 3])  # 2: through Executor.map(group=); 3: processes
def test_tiny_run_agrees_across_channels_and_with_one_process(peers):
    res = kmeans.run_kmeans(["file", "tcp"], peers, 300, 4, 3, log=lambda m: None)
    assert set(res["channels"]) == {"file", "tcp"}
    for row in res["channels"].values():
        assert row["ranks_agree"] and row["matches_single_process"]
        assert 0 < row["comm_s"] <= row["epoch_s"] and row["cost_usd"]["total"] > 0
    assert res["channels_agree"]
    text = kmeans.format_table(res)
    assert "| tcp |" in text and "agree across channels: yes" in text
    if peers == 2:
        assert res["runner"].startswith("Executor.map")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--channels", "pigeon"], "unknown channel"),
        (["--epochs", "0"], "--epochs"),
        (["--k", "50", "--points", "10"], "--k must not exceed"),
    ],
)
def test_bad_options(argv, match):
    parser = argparse.ArgumentParser()
    kmeans.add_arguments(parser)
    with pytest.raises(ConfigurationError, match=match):
        kmeans.run(parser.parse_args(argv))


def test_tiny_run_over_mpi_ranks():
    import shutil

    if shutil.which("mpirun") is None:
        pytest.skip("no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
    res = kmeans.run_kmeans(["mpi"], 2, 300, 4, 3, log=lambda m: None)
    row = res["channels"]["mpi"]
    assert row["ranks_agree"] and row["matches_single_process"], res["skipped"]
