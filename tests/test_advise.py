"""The device advisor: pure decisions on synthetic measurements, then real runs on a pool."""

from __future__ import annotations

import json
import os
import statistics

import numpy as np
import pytest

import hetfaas
from hetfaas import cli
from hetfaas.advisor import NO_GPU, Advice, Option, Prices, SizeInfo, Trial, advise, decide
from hetfaas.advisor.decide import (
    ABOVE,
    ALWAYS,
    BELOW,
    FAILED,
    MIXED,
    NEVER,
    NOT_MEASURED,
    Cell,
    Crossing,
    Spread,
    compare,
)
from hetfaas.advisor.inputs import (
    concat_axis0,
    parse_shape,
    resize_axis0,
    same_result,
    scaled,
    sizes_from,
    split_axis0,
)
from hetfaas.exceptions import ConfigurationError

ONE = Option("1cpu", "1 call on 1 core", 1)
SPLIT = Option("2cpu-split", "2 calls", 2, calls=2)
GPU = Option("gpu", "1 call on a GPU", 1, gpus=1)
BARE = Option("bare-1cpu", "bare metal", 1, serverless=False)


def cell(option: Option, size: int, *walls: float, compute: float | None = None) -> Cell:
    """A measured cell whose trials took ``walls`` seconds (compute: 90% of each)."""
    trials = tuple(
        Trial(w, w * 0.9 if compute is None else compute, option.cpus, option.gpus, option.calls)
        for w in walls
    )
    return Cell(option.key, size, trials)


SIZES = (1, 2, 4, 8, 16)


def synthetic() -> list[Cell]:
    """One core takes s seconds at size s; two cores take 3 + s/2 (an overhead of 3 s, half
    the work each): equal at s = 6, so the break-even lies between the measured 4 and 8."""
    cells = []
    for s in SIZES:
        cells.append(cell(BARE, s, 0.9 * s))
        cells.append(cell(ONE, s, s * 0.99, s, s * 1.01))
        two = 3 + s / 2
        cells.append(cell(SPLIT, s, two * 0.99, two, two * 1.01))
    return cells


# --------------------------------------------------------------------------------------------
# decisions, no processes


def test_break_even_is_bracketed_between_the_measured_sizes_where_the_curves_cross():
    d = decide([BARE, ONE, SPLIT], synthetic(), Prices(1.0, 1.0))
    assert d.baseline == "1cpu" and d.bare == "bare-1cpu"
    (be,) = d.versus_baseline
    assert (be.subject, be.versus, be.status) == ("2cpu-split", "1cpu", ABOVE)
    (c,) = be.crossings
    assert (c.lower, c.upper, c.before, c.after) == (4, 8, "1cpu", "2cpu-split")
    assert not c.overlap
    # log-log through the ratios 5/4 at 4 and 7/8 at 8 crosses 1 near 6.2 (true: 6)
    assert 5.5 < c.interpolated < 7.0
    assert [ch.fastest for ch in d.choices] == ["1cpu", "1cpu", "1cpu", "2cpu-split", "2cpu-split"]
    assert d.fastest_changes == (Crossing(4, 8, "1cpu", "2cpu-split"),)
    # two cores held for 3 + s/2 cost 6 + s core-seconds, more than s: one core is cheapest
    assert {ch.cheapest for ch in d.choices} == {"1cpu"}
    assert d.cheapest_changes == ()
    assert "between n=4 and n=8 (bracketed)" in be.text()
    assert "interpolated" in be.text() and "not measured" in be.text()
    # bare metal on one core (0.9 s) loses to the split (3 + s/2) once s > 7.5
    vb = d.versus_bare
    assert vb is not None and vb.status == ABOVE and vb.versus == "bare-1cpu"
    assert (vb.crossings[0].lower, vb.crossings[0].upper) == (4, 8)
    assert [ch.beats_bare for ch in d.choices] == [False, False, False, True, True]


def test_compare_statuses_always_never_below_mixed_and_ties():
    def spreads(values: dict[int, float]) -> dict[int, Spread]:
        return {s: Spread.of([v]) for s, v in values.items()}

    base = spreads({1: 1.0, 2: 2.0, 4: 4.0})
    assert compare("x", "b", spreads({1: 0.5, 2: 1.0, 4: 2.0}), base).status == ALWAYS
    assert compare("x", "b", spreads({1: 2.0, 2: 3.0, 4: 5.0}), base).status == NEVER
    below = compare("x", "b", spreads({1: 0.5, 2: 3.0, 4: 5.0}), base)
    assert below.status == BELOW and below.crossings[0].after == "b"
    assert "until between n=1 and n=2" in below.text()
    assert compare("x", "b", spreads({1: 0.5, 2: 3.0, 4: 1.0}), base).status == MIXED
    # a tie is not a win: the baseline keeps it
    assert compare("x", "b", spreads({1: 1.0, 2: 2.0, 4: 4.0}), base).status == NEVER
    # only sizes measured on both sides count
    part = compare("x", "b", spreads({2: 1.0, 8: 1.0}), base)
    assert part.sizes == (2,) and part.status == ALWAYS
    assert compare("x", "b", {}, base).status == NOT_MEASURED


def test_fastest_and_cheapest_part_ways_with_the_price_of_a_gpu():
    cells = [cell(BARE, 1, 1.0), cell(ONE, 1, 1.0, 1.1, 0.9), cell(GPU, 1, 0.1, 0.11, 0.09)]
    dear = decide([BARE, ONE, GPU], cells, Prices(core_hour=1.0, gpu_hour=100.0))
    (ch,) = dear.choices
    # GPU: 0.1 s x (1 core + 1 GPU) = 0.1/3600 + 10/3600; one core: 1/3600
    assert (ch.fastest, ch.cheapest, ch.runner_up, ch.close) == ("gpu", "1cpu", "1cpu", False)
    assert ch.cheapest_cost == pytest.approx(1.0 / 3600)
    cheap = decide([BARE, ONE, GPU], cells, Prices(core_hour=1.0, gpu_hour=1.0))
    assert cheap.choices[0].cheapest == "gpu"
    assert cheap.choices[0].beats_bare is True


def test_cells_not_measured_or_failed_are_never_chosen():
    cells = [
        cell(BARE, 1, 1.0),
        cell(ONE, 1, 2.0),
        Cell("gpu", 1, (), NOT_MEASURED, NO_GPU),
        Cell("2cpu-split", 1, (), FAILED, "RuntimeError: boom"),
    ]
    d = decide([BARE, ONE, SPLIT, GPU], cells)
    assert (d.choices[0].fastest, d.choices[0].cheapest, d.choices[0].runner_up) == (
        "1cpu",
        "1cpu",
        None,
    )
    assert {b.subject: b.status for b in d.versus_baseline} == {
        "2cpu-split": NOT_MEASURED,
        "gpu": NOT_MEASURED,
    }
    nothing = decide([BARE, ONE], [cell(BARE, 1, 1.0), Cell("1cpu", 1, (), FAILED, "x")])
    assert nothing.choices[0].fastest is None and nothing.choices[0].beats_bare is None
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        decide([ONE], [Cell("nope", 1, ())])


def test_overlapping_spreads_are_called_close():
    cells = [cell(ONE, 1, 1.0, 1.2, 1.4), cell(SPLIT, 1, 0.9, 1.1, 1.3)]
    (ch,) = decide([ONE, SPLIT], cells).choices
    assert (ch.fastest, ch.runner_up, ch.close) == ("2cpu-split", "1cpu", True)


def test_trial_arithmetic_and_prices():
    t = Trial(wall_s=2.0, compute_s=1.5, cpus=3, gpus=1)
    assert (t.overhead_s, t.core_s, t.gpu_s) == (0.5, 6.0, 2.0)
    assert Prices(3600, 7200).cost(2.0, 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="gpu_hour"):
        Prices(1.0, -1.0)
    s = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)


def test_the_table_and_json_of_synthetic_advice(tmp_path):
    options = [BARE, ONE, SPLIT]
    cells = synthetic()
    advice = Advice(
        function="demo.fn", sizes=[SizeInfo(s, ((s, 4),), s * 16) for s in SIZES],
        options=options, cells=cells, decision=decide(options, cells), prices=Prices(),
        cpus=2, repeats=3, warmup=1, batched=(0,), notes=[NO_GPU], gpu_note=NO_GPU,
    )  # fmt: skip
    text = str(advice)
    assert NO_GPU in text
    rows = [line.split() for line in text.splitlines()]
    for s in SIZES:
        for o in options:
            assert [str(s), o.key] in [r[:2] for r in rows], (s, o.key)
    assert "1cpu -> 2cpu-split between n=4 and n=8 (bracketed)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    path = tmp_path / "sub" / "advice.json"
    advice.write_json(path)
    d = json.loads(path.read_text())
    assert d["schema"] == "hetfaas.advise/1"
    assert d["gpu"] == {"measured": False, "note": NO_GPU}
    assert d["fastest_changes"][0]["lower"] == 4 and d["fastest_changes"][0]["bracketed"]
    one = next(c for c in d["cells"] if c["option"] == "1cpu" and c["size"] == 8)
    assert one["wall_s"]["median"] == 8 and one["core_s"]["median"] == 8


# --------------------------------------------------------------------------------------------
# inputs, no processes


def test_resizing_splitting_and_joining_along_axis_0():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert resize_axis0(x, 2).tolist() == x[:2].tolist()
    big = resize_axis0(x, 6)
    assert big.shape == (6, 3) and big[4].tolist() == x[0].tolist()
    w = np.ones((3, 3), dtype=np.float32)
    a, b, k = scaled((x, w, 7), (0,), 8)
    assert a.shape == (8, 3) and b is w and k == 7
    parts = split_axis0((0,))((x, w), 3)
    assert [p[0].shape[0] for p in parts] == [1, 1, 2] and all(p[1] is w for p in parts)
    assert concat_axis0([p[0] @ p[1] for p in parts]).tolist() == (x @ w).tolist()
    assert len(split_axis0((0,))((x[:1], w), 2)) == 1  # never an empty part
    assert same_result(x, x + 1e-9)[0] and not same_result(x, x * 2)[0]
    assert not same_result(x, x[:2])[0]
    with pytest.raises(ConfigurationError, match="give combine="):
        concat_axis0([1.0, 2.0])


def test_sizes_and_shapes_are_checked():
    x = np.zeros((64, 2))
    assert sizes_from((x,), (0,), None, None) == [8, 16, 32, 64]
    assert sizes_from((x,), (0,), [32, 8, 8], None) == [8, 32]
    assert sizes_from((x,), (0,), None, [0.5, 2]) == [32, 128]
    with pytest.raises(ConfigurationError, match="not both"):
        sizes_from((x,), (0,), [8], [1.0])
    with pytest.raises(ConfigurationError, match="rows >= 1"):
        sizes_from((x,), (0,), [0], None)
    assert parse_shape("1000x1000") == (1000, 1000)
    with pytest.raises(ConfigurationError, match="bad shape"):
        parse_shape("10xa")
    with pytest.raises(ConfigurationError, match="not an array"):
        advise(np.add, x, 3, batched=(1,))


# --------------------------------------------------------------------------------------------
# real runs on a local pool

CALLER = os.getpid()


def centered(x: np.ndarray) -> np.ndarray:
    """Depends on every row: parts joined differ from the whole."""
    return x - x.mean(axis=0)


def column_sums(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=0)


def only_in_caller(x: np.ndarray, *, pid: int) -> np.ndarray:
    if os.getpid() != pid:
        raise RuntimeError("this function runs only in the caller's process")
    return x


@pytest.fixture(scope="module")
def matmul_advice() -> Advice:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64), dtype=np.float32)
    b = rng.standard_normal((64, 64), dtype=np.float32)
    return advise(np.matmul, a, b, batched=(0,), sizes=[8, 64], repeats=3, settle_s=0.05)


def test_real_advice_has_a_row_per_option_and_size(matmul_advice):
    a = matmul_advice
    keys = [o.key for o in a.options]
    cores = len(os.sched_getaffinity(0))
    assert keys[:2] == ["bare-1cpu", "1cpu"]
    if cores >= 2:
        assert {f"{a.cpus}cpu-split", f"{a.cpus}cpu-threads", f"bare-{a.cpus}cpu"} <= set(keys)
    assert [s.n for s in a.sizes] == [8, 64]
    assert a.sizes[0].shapes == ((8, 64), (64, 64))
    for s in (8, 64):
        for k in keys:
            c = a.cell(k, s)
            assert c is not None and c.measured, (k, s, c)
            assert len(c.trials) == 3
            assert c.verified in (None, True)  # the matmul splits by rows
    text = str(a)
    rows = [line.split()[:2] for line in text.splitlines()]
    for s in (8, 64):
        for k in keys:
            assert [str(s), k] in rows
    if not any(o.gpus for o in a.options):
        assert NO_GPU in text and a.gpu_note == NO_GPU


def test_real_fastest_is_the_smallest_measured_median(matmul_advice):
    a = matmul_advice
    for s in (8, 64):
        medians = {
            o.key: statistics.median(t.wall_s for t in a.cell(o.key, s).trials)
            for o in a.options
            if o.serverless
        }
        ch = a.choice(s)
        assert ch.fastest == min(medians, key=medians.get)
        assert ch.fastest_wall_s == medians[ch.fastest]
        costs = {k: a.cell(k, s).cost(a.prices) for k in medians}
        assert ch.cheapest == min(costs, key=costs.get)


def test_real_core_seconds_are_wall_times_cores_the_calls_were_pinned_to(matmul_advice):
    a = matmul_advice
    held = {o.key: o.cpus for o in a.options}
    d = a.as_dict()
    for c in d["cells"]:
        for t in c["trials"]:
            # the cores come from the runtime's record of each call, not from the request
            assert t["cpus"] == held[c["option"]], c["option"]
            assert t["core_s"] == pytest.approx(t["wall_s"] * t["cpus"])
            assert t["gpu_s"] == pytest.approx(t["wall_s"] * t["gpus"])
            # the function's own time (runtime stamps) lies inside the caller's clock
            assert 0 < t["compute_s"] <= t["wall_s"]
            if c["option"].endswith("split"):
                assert t["calls"] == 2 and t["compute_total_s"] >= t["compute_s"]


def test_a_function_that_does_not_split_is_not_measured_split():
    x = np.random.default_rng(1).standard_normal((16, 8))
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: no split option")
    a = advise(centered, x, sizes=[16], repeats=1, settle_s=0)
    split = a.cell(f"{a.cpus}cpu-split", 16)
    assert split.status == NOT_MEASURED and "does not split along axis 0" in split.note
    assert a.cell("1cpu", 16).measured and a.cell("1cpu", 16).verified
    assert a.choice(16).fastest != split.option
    # the same kind of function with a combine that is right for it: measured and verified
    b = advise(column_sums, x, sizes=[16], repeats=1, settle_s=0, combine=sum, gpu=False)
    ok = b.cell(f"{b.cpus}cpu-split", 16)
    assert ok.measured and ok.verified


def test_a_function_failing_in_the_workers_fails_its_cells_only():
    x = np.ones((4, 2))
    a = advise(only_in_caller, x, kwargs={"pid": CALLER}, sizes=[4], repeats=1, settle_s=0)
    assert a.cell("bare-1cpu", 4).measured
    one = a.cell("1cpu", 4)
    assert one.status == FAILED and "only in the caller" in one.note
    assert a.choice(4).fastest is None
    assert "failed: RuntimeError" in str(a)


def test_the_function_failing_here_is_an_error_that_says_so():
    with pytest.raises(ConfigurationError, match=r"raised ValueError.* in this process at n=4"):
        advise(np.matmul, np.ones((4, 3)), np.ones((4, 3)), sizes=[4], repeats=1, settle_s=0)


def test_cli_advise_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "advice.json"
    rc = cli.main(["advise", "numpy:matmul", "--args-shape", "32x32", "32x32", "--array",
                   "numpy", "--batched", "0", "--sizes", "8,32", "--repeats", "2",
                   "--settle-s", "0", "--quiet", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert text.startswith("hetfaas advise: numpy:matmul on N = ")
    d = json.loads(out.read_text())
    assert [s["n"] for s in d["sizes"]] == [8, 32]
    assert {c["size"] for c in d["choices"]} == {8, 32}
    for ch in d["choices"]:
        assert f"{ch['size']:>7} {ch['fastest']}" in text
    assert hetfaas.advise is advise


def example_rows() -> tuple[np.ndarray, np.ndarray]:
    return np.ones((6, 4), dtype=np.float32), np.ones((4, 4), dtype=np.float32)


def test_cli_takes_example_arguments_from_a_function(capsys):
    rc = cli.main(["advise", "numpy:matmul", "--args-from", f"{__name__}:example_rows",
                   "--batched", "0", "--scales", "0.5", "1", "--repeats", "1", "--settle-s", "0",
                   "--quiet", "--no-gpu"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "GPU: not measured (turned off)" in text
    rows = [line.split()[:2] for line in text.splitlines()]
    # 3 and 6 rows: the example's 6 scaled by 0.5 and 1; bare metal is never in the choices
    assert rows.count(["3", "bare-1cpu"]) == rows.count(["6", "bare-1cpu"]) == 1


def test_cli_usage_errors_exit_2(capsys):
    assert cli.main(["advise", "numpy:nope", "--args-shape", "4x4"]) == 2
    assert "numpy has no attribute 'nope'" in capsys.readouterr().err
    numpy_args = ["--args-shape", "4x4", "--array", "numpy"]
    assert cli.main(["advise", "numpy:abs", *numpy_args, "--sizes", "0"]) == 2
    assert "rows >= 1" in capsys.readouterr().err
    bad = ["advise", "numpy:abs", *numpy_args, "--price-gpu-hour", "-1"]
    assert cli.main(bad) == 2
    assert "gpu_hour" in capsys.readouterr().err


def test_gpu_is_measured_when_there_is_one():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    a = torch.randn(8, 64, 64)
    b = torch.randn(8, 64, 64)
    adv = advise(torch.bmm, a, b, sizes=[2, 8], repeats=2, settle_s=0)
    for s in (2, 8):
        for key in ("gpu", "bare-gpu"):
            c = adv.cell(key, s)
            assert c.measured and c.verified in (None, True), (key, c)
            assert all(t.gpus == 1 and t.gpu_s == pytest.approx(t.wall_s) for t in c.trials)
    assert adv.gpu_note is None
