"""sinfo lines and GRES forms, as real clusters print them (pure: no Slurm needed)."""

import pytest

from hetfaas.backends.base import Capacity
from hetfaas.backends.slurm_info import (
    Gres,
    cluster_capacity,
    expand_hostlist,
    parse_gres,
    parse_sinfo,
    summarize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(null)", ()),
        ("", ()),
        ("gpu", (Gres("gpu", "", 1),)),
        ("gpu:2", (Gres("gpu", "", 2),)),
        ("gpu:a100:2", (Gres("gpu", "a100", 2),)),
        ("gpu:a100:2(S:0)", (Gres("gpu", "a100", 2),)),
        ("gpu:a100:8(S:0-1)", (Gres("gpu", "a100", 8),)),
        ("gpu:tesla:4(S:0,2)", (Gres("gpu", "tesla", 4),)),
        ("gpu:4(S:0-1)", (Gres("gpu", "", 4),)),
        ("gpu:a100", (Gres("gpu", "a100", 1),)),
        ("gpu:1g.10gb:4", (Gres("gpu", "1g.10gb", 4),)),
        ("gpu:h100_80gb:4(S:0-3)", (Gres("gpu", "h100_80gb", 4),)),
        ("gpu:no_consume:2", (Gres("gpu", "", 2),)),
        ("bandwidth:lustre:4G", (Gres("bandwidth", "lustre", 4 * 1024**3),)),
        (
            "gpu:a100:2(S:0),gpu:v100:1(S:1)",
            (Gres("gpu", "a100", 2), Gres("gpu", "v100", 1)),
        ),
        (
            "gpu:a100:4(S:0,1),mps:400(S:0,1),shard:8",
            (Gres("gpu", "a100", 4), Gres("mps", "", 400), Gres("shard", "", 8)),
        ),
        ("mps:100,gpu:1", (Gres("mps", "", 100), Gres("gpu", "", 1))),
        ("gpu:2,(null)", (Gres("gpu", "", 2),)),
    ],
)
def test_gres_forms(text, expected):
    assert parse_gres(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("vm", ["vm"]),
        ("node[01-03]", ["node01", "node02", "node03"]),
        ("node[1-2,7],gpu1", ["node1", "node2", "node7", "gpu1"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ],
)
def test_hostlists(text, names):
    assert expand_hostlist(text) == names


def test_this_machines_line():
    # what scripts/slurm-up's node prints
    assert cluster_capacity("vm|2|21695|gpu:2|idle|debug*\n") == Capacity(
        2, 2, ("gpu", "gpu"), 2, 21695
    )


def test_several_typed_nodes_are_summed():
    out = "\n".join(
        [
            "gpu01|64|512000|gpu:a100:4(S:0-1)|mixed|gpu",
            "gpu02|64|512000|gpu:a100:4(S:0-1)|allocated|gpu",
            "gpu03|32|256000|gpu:v100:2(S:0),gpu:t4:1(S:1)|idle|gpu",
            "cpu01|128|1024000|(null)|idle|cpu*",
        ]
    )
    cap = cluster_capacity(out)
    assert cap.cpus == cap.max_workers == 64 + 64 + 32 + 128
    assert cap.gpus == 11
    assert cap.memory_mb == 512000 * 2 + 256000 + 1024000
    assert cap.gpu_names.count("a100") == 8 and cap.gpu_names.count("t4") == 1
    info = summarize(parse_sinfo(out))
    assert (info.max_node_cpus, info.max_node_gpus, info.max_node_memory_mb) == (
        128,
        4,
        1024000,
    )


def test_a_node_in_several_partitions_counts_once():
    out = (
        "n1|16|64000|gpu:2|idle|debug*\nn1|16|64000|gpu:2|idle|long\nn2|16|64000|(null)|idle|long\n"
    )
    nodes = parse_sinfo(out)
    assert [n.name for n in nodes] == ["n1", "n2"]
    assert nodes[0].partitions == ("debug", "long")
    assert cluster_capacity(out) == Capacity(32, 2, ("gpu", "gpu"), 32, 128000)


def test_down_and_drained_nodes_are_left_out():
    out = "\n".join(
        [
            "a|8|1000|gpu:1|idle|p",
            "b|8|1000|gpu:1|down*|p",
            "c|8|1000|gpu:1|drained|p",
            "d|8|1000|gpu:1|mixed+drain|p",
            "e|8|1000|gpu:1|idle*|p",
            "f|8|1000|gpu:1|idle~|p",  # powered down, starts on demand
            "g|8|1000|gpu:1|allocated+completing|p",
            "h|8|1000|gpu:1|fail|p",
        ]
    )
    usable = [n.name for n in parse_sinfo(out) if n.usable]
    assert usable == ["a", "f", "g"]
    assert cluster_capacity(out).cpus == 24 and cluster_capacity(out).gpus == 3
    # all down: the configured size still shows
    assert cluster_capacity("x|4|100|gpu:2|down*|p\n").cpus == 4


def test_grouped_lines_without_dash_n():
    # sinfo without -N: one line names several nodes; "+" marks the least of differing values
    out = "node[01-04]|48+|192000+|gpu:a100:2(S:0)|idle|batch*\n"
    cap = cluster_capacity(out)
    assert cap.cpus == 4 * 48 and cap.gpus == 8 and cap.memory_mb == 4 * 192000


def test_junk_and_missing_fields_do_not_break_it():
    out = "\n\nvm|2\nweird line\nn2|x|y|gpu:zz|idle|p\n"
    nodes = parse_sinfo(out)
    assert [n.name for n in nodes] == ["vm", "n2"]
    assert nodes[0].cpus == 2 and nodes[0].gres == ()
    assert nodes[1].cpus == 0 and nodes[1].gpus == 1  # "gpu:zz": one GPU of type zz
    assert cluster_capacity("") == Capacity(0, 0, (), 0, 0)
