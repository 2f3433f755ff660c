#!/usr/bin/env python3
"""The acquire + pin + release cycle of a resident model from Python, against the C++ blocking client's
same cycle measured in the same process and run (target: Python <= 2x C++), and whether a tensor handed to
Python is the cache's own memory (the same data pointer each time).

    PYTHONPATH=build/python python3 bench/python_cycle_bench.py [--cycles 2000]
"""

import argparse
import statistics
import time

import mcache

MiB = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}]) as rt:
        rt.models.add_synthetic("m", [MiB] * 4)
        s = rt.session("python-bench")
        with s.acquire("m") as l, s.pin(l, 0) as p:  # resident from here on
            first = p.tensor(sorted(p.state_dict())[0]).data_ptr()
        py_s, cpp_s = [], []
        for _ in range(args.rounds):  # interleaved, so both see the same machine
            t = time.perf_counter()
            for _ in range(args.cycles):
                with s.acquire("m") as l, s.pin(l, 0) as p:
                    pass
            py_s.append((time.perf_counter() - t) / args.cycles)
            cpp_s.append(mcache._core._cpp_cycle_seconds(rt._core, "m", 0, args.cycles))
        with s.acquire("m") as l, s.pin(l, 0) as p:
            same = p.tensor(sorted(p.state_dict())[0]).data_ptr() == first
        py, cpp = statistics.median(py_s), statistics.median(cpp_s)
        print("cycle (acquire, pin, release both) of a resident model, median of %d rounds of %d:" % (args.rounds, args.cycles))
        print("  C++ blocking client %8.1f us" % (cpp * 1e6))
        print("  Python              %8.1f us   ratio %.2f (target <= 2.00): %s" % (py * 1e6, py / cpp, "met" if py / cpp <= 2 else "MISSED"))
        print("  tensor handed to Python is the cache's memory (same data pointer): %s" % ("yes" if same else "NO"))


if __name__ == "__main__":
    main()
