#!/usr/bin/env python3
"""The image server's failing pattern, from Python, on several threads at once.

There, load(text_encoder) put the encoder in a RAM cache and returned a handle; load(transformer) into a
nearly full cache could then evict the encoder, and locking it on the GPU failed with a KeyError. Here
each job leases both models (a lease keeps a model in RAM until released), then pins both, runs, and
releases: however the threads interleave, no job ever finds a model it holds gone.

    PYTHONPATH=build/python python3 samples/python/seed_scenario.py [--threads 4] [--jobs 5] [--devices all]
"""

import argparse
import sys
import threading
import time

import torch

import mcache

MiB = 1 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=5, help="jobs per thread")
    ap.add_argument("--devices", default="simulated", help="'simulated' (two simulated GPUs) or 'all' (every GPU)")
    args = ap.parse_args()

    devices = "all" if args.devices == "all" else [{"kind": "simulated", "vram_budget": 96 * MiB}] * 2
    # RAM holds the encoder and one transformer at a time: the second transformer needs an eviction.
    with mcache.Runtime(ram_budget=160 * MiB, devices=devices, default_wait=30) as rt:
        if rt.device_count == 0:
            print("no GPU seen: run with --devices simulated")
            return 1
        rt.models.add_synthetic("text_encoder", [8 * MiB] * 2, seed=1)         # 64 MiB of float32
        for i in range(2):
            rt.models.add_synthetic("transformer_%d" % i, [10 * MiB] * 2, seed=2 + i)  # 80 MiB each
        failures, done = [], [0]
        lock = threading.Lock()

        def job_thread(t):
            s = rt.session("thread-%d" % t)
            for j in range(args.jobs):
                try:
                    transformer = "transformer_%d" % ((t + j) % 2)
                    with s.acquire("text_encoder") as te, s.acquire(transformer) as tr, \
                         s.pin(te, "cpu") as p1, s.pin(tr, t % rt.device_count) as p2:
                        weights = p2.state_dict()
                        prompt = sum(float(w[:4].sum()) for w in p1.state_dict().values())
                        out = sum(float(w[:4].sum()) for w in weights.values()) + prompt
                        assert out == out  # the tensors are readable: no KeyError, no freed memory
                    with lock:
                        done[0] += 1
                except Exception as e:  # noqa: BLE001
                    with lock:
                        failures.append("thread %d job %d: %r" % (t, j, e))

        start = time.perf_counter()
        threads = [threading.Thread(target=job_thread, args=(t,)) for t in range(args.threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = rt.stats()
        print("%d jobs on %d threads in %.2f s: %d done, %d failed; RAM evictions %d, loads %d"
              % (args.threads * args.jobs, args.threads, time.perf_counter() - start, done[0], len(failures),
                 stats["ram"]["evictions"], stats["ram"]["loads"]))
        for f in failures:
            print("  " + f)
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
