"""A small load for `hetfaas monitor`: 300 MiB held, then two processes of matmuls for 3 s."""

import multiprocessing as mp
import time

import numpy as np


def work(n):
    a = np.random.rand(n, n)
    end = time.time() + 3
    while time.time() < end:
        a = np.tanh(a @ a)


if __name__ == "__main__":
    block = np.ones(40_000_000)  # 300 MiB
    time.sleep(1)
    ps = [mp.Process(target=work, args=(600,)) for _ in range(2)]
    [p.start() for p in ps]
    [p.join() for p in ps]
    del block
    time.sleep(1)
