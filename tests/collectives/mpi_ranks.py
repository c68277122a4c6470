"""Run under ``mpirun -np P``: every collective of a Communicator over ``mpi://``.

``python mpi_ranks.py OUT contract``: the contract; ``python mpi_ranks.py OUT absent R``: rank R
never arrives and the others must time out naming it. Each rank writes ``OUT/<rank>`` when it
is done (mpirun interleaves the ranks' stdout).
"""

import sys
import time
from pathlib import Path

import numpy as np

from hetfaas.collectives import MAX, PROD, SUM, Communicator, ReduceOp
from hetfaas.exceptions import GroupMismatch, PeerTimeout


def contract(comm: Communicator) -> None:
    r, p = comm.rank, comm.size
    total = sum(range(p))
    assert comm.channel.scheme == "mpi" and comm.channel.kind == "native"
    assert comm.allreduce(r) == total
    assert comm.allreduce(r + 1, PROD) == np.prod(range(1, p + 1))
    assert comm.allreduce([r, 1.5]) == [total, 1.5 * p]
    arr = comm.allreduce(np.full(7, r, dtype=np.float32))
    assert arr.dtype == np.float32 and (arr == total).all()
    if p <= 4:  # CPU tensors too (importing torch in 7 ranks on 2 cores costs ~15 s)
        import torch

        ten = comm.allreduce(torch.full((2, 3), float(r)), MAX)
        assert isinstance(ten, torch.Tensor) and ten.shape == (2, 3) and (ten == p - 1).all()
    # not commutative, not associative: strictly ((x0 op x1) op x2) ...
    lin = ReduceOp(lambda a, b: 3 * a + b)
    expect = 0
    for i in range(1, p):
        expect = 3 * expect + i
    assert comm.allreduce(r, lin) == expect
    assert int(comm.allreduce(np.array([r]), lin)[0]) == expect
    # associative but not commutative (MPI user op, commute=False): rank order kept
    mat = ReduceOp(lambda a, b: (a.reshape(2, 2) @ b.reshape(2, 2)).reshape(-1), associative=True)
    mine = np.array([[1, r], [0, 1]], dtype=np.int64).reshape(-1)  # products add the r's
    shear = comm.allreduce(mine, mat)
    assert list(shear) == [1, total, 0, 1]
    flags = comm.allreduce(np.array([r == 0, True]), MAX)  # bool: pickled, numpy's MAX
    assert flags.dtype == bool and flags.tolist() == [True, True]
    red = comm.reduce(np.ones(3), SUM, root=p - 1)
    assert (red is None) == (r != p - 1) and (red is None or (red == p).all())
    assert comm.reduce(r, root=0) == (total if r == 0 else None)
    assert comm.scan(r) == sum(range(r + 1))
    assert list(comm.scan(np.array([r, 1]))) == [sum(range(r + 1)), r + 1]
    assert comm.scan(r, lin) == _prefix(r)
    assert comm.bcast("hello" if r == 0 else None, root=0) == "hello"
    big = comm.bcast(np.arange(10_000.0) if r == p - 1 else None, root=p - 1)
    assert big.shape == (10_000,) and big[-1] == 9_999.0
    assert comm.gather({"r": r}, root=0) == ([{"r": i} for i in range(p)] if r == 0 else None)
    assert comm.allgather(str(r) * r) == [str(i) * i for i in range(p)]
    assert comm.scatter([i * 10 for i in range(p)] if r == 0 else None, root=0) == r * 10
    comm.barrier()
    nxt, prv = (r + 1) % p, (r - 1) % p
    comm.send({"from": r}, nxt, tag=3)
    comm.send(np.full(4, r), nxt)
    assert comm.recv(prv, tag=3) == {"from": prv}
    assert (comm.recv(prv) == prv).all()


def _prefix(r: int) -> int:
    acc = 0
    for i in range(1, r + 1):
        acc = 3 * acc + i
    return acc


def main() -> None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    out = Path(sys.argv[1])

    def done(text: str = "") -> None:
        (out / str(rank)).write_text(f"OK {rank} {text}".strip())

    if sys.argv[2] == "contract":
        with Communicator(rank, size, "mpi-contract", channel="mpi://", timeout_s=30) as comm:
            contract(comm)
        done()
        return
    if sys.argv[2] == "solo":  # a singleton world, started without mpirun
        with Communicator(0, 1, "solo", channel="mpi://", timeout_s=5) as comm:
            assert comm.allreduce(5) == 5 and comm.gather(1) == [1] and comm.scan(2) == 2
        try:
            Communicator(0, 2, "pair", channel="mpi://", timeout_s=1)
        except GroupMismatch as exc:
            done(str(exc))
        return
    absent = int(sys.argv[3])
    with Communicator(rank, size, "mpi-absent", channel="mpi://", timeout_s=2) as comm:
        comm.barrier()
        if rank == absent:
            time.sleep(4)  # arrives after everyone else gave up
            done()
            return
        try:
            comm.allreduce(np.ones(4))
        except PeerTimeout as exc:
            assert exc.missing == [absent], exc.missing
            done(str(exc))
        else:
            raise AssertionError("allreduce without a rank did not time out")


if __name__ == "__main__":
    main()
