# The mcache Python package (Note [The Python binding], python/module.cpp): the API, errors, releases on
# exceptions, threads and tensor lifetimes, over simulated devices.

import gc
import os
import tempfile
import threading
import time

import pytest
import torch

import mcache

MiB = 1 << 20


def layers(mib, count=4):
    """Element counts of `count` float32 tensors making `mib` MiB in all."""
    return [mib * MiB // 4 // count] * count


@pytest.fixture
def rt():
    runtime = mcache.Runtime(ram_budget=64 * MiB, default_wait=0.2,
                             devices=[{"kind": "simulated", "vram_budget": 32 * MiB}])
    runtime.models.add_synthetic("te", layers(16), seed=1)
    runtime.models.add_synthetic("tr", layers(24), seed=2)
    runtime.models.add_synthetic("vae", layers(8), seed=3)
    yield runtime
    runtime.close()


def test_a_lease_and_a_pin_hand_out_the_caches_own_tensors_without_a_copy(rt):
    s = rt.session("worker")
    with s.acquire("te") as te, s.pin(te, 0) as p:
        host = te.state_dict()
        device = p.state_dict()
        assert set(host) == set(device) and len(host) == 4
        name = sorted(host)[0]
        assert p.tensor(name).data_ptr() == device[name].data_ptr()  # the same memory each time
        assert te.tensor(name).data_ptr() == host[name].data_ptr()
        assert torch.equal(host[name], device[name])
        assert p.device == 0 and not p.partial and p.resident_bytes == 16 * MiB
        assert p.torch_device == torch.device("cpu") == device[name].device  # a simulated device's copies


def test_the_image_servers_keyerror_cannot_happen_a_leased_model_stays_while_others_load(rt):
    # The flaw this project fixes: load the text encoder, load the transformer into a nearly full cache,
    # then lock both. A lease keeps the first in RAM; the cache evicts only what nobody holds.
    s = rt.session()
    with s.acquire("te") as te:
        with s.acquire("tr") as tr:  # 16 + 24 of 64 MiB: fits beside te
            with s.pin(te, "cpu") as p1, s.pin(tr, 0) as p2:
                assert p1.device == "cpu" and p2.device == 0
        with s.acquire("vae") as vae:  # the transformer may go now; the leased encoder may not
            assert rt.stats()["ram"]["used_bytes"] <= 64 * MiB
            with s.pin(te, 0) as again:
                assert again.tensor(sorted(te.state_dict())[0]) is not None
            del vae


def test_leases_and_pins_are_released_when_their_with_block_raises(rt):
    s = rt.session()
    with pytest.raises(RuntimeError, match="boom"):
        with s.acquire("te") as te, s.pin(te, 0):
            raise RuntimeError("boom")
    stats = rt.stats()
    assert stats["ram"]["leased_bytes"] == 0
    assert stats["devices"][0]["pinned_bytes"] == 0
    assert not te.held


def test_every_error_is_an_mcache_error_subclass_with_its_code_and_an_actionable_text(rt):
    s = rt.session()
    with pytest.raises(mcache.UnknownModel) as e:
        s.acquire("nope")
    assert e.value.code == "unknown_model" and "nope" in str(e.value)
    assert isinstance(e.value, mcache.Error)
    with s.acquire("te") as te:
        with pytest.raises(mcache.InvalidDevice):
            s.pin(te, 7)
        with pytest.raises(mcache.InvalidDevice):
            s.pin(te, "gpu")
    with pytest.raises(mcache.InvalidLease):
        s.pin(te, 0)  # released at the end of the with block
    with pytest.raises(mcache.InvalidArgument, match="ram_budget"):
        mcache.Runtime(ram_budget="lots")
    with pytest.raises(mcache.InvalidArgument, match="unknown key"):
        mcache.Runtime(ram_budgett=1)
    with pytest.raises(mcache.FileMissing):
        rt.models.add_file("ghost", "/nonexistent/model.safetensors")
    with pytest.raises(mcache.InvalidArgument):  # already registered: the catalog is unchanged
        rt.models.add_synthetic("te", layers(1))
    assert rt.models.describe("te")["bytes"] == 16 * MiB


def test_a_model_larger_than_the_device_is_pinned_partly_and_streamed_in_order():
    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 12 * MiB}]) as rt:
        rt.models.add_synthetic("big", layers(24, count=8), seed=5)
        s = rt.session()
        with s.acquire("big") as big, s.pin(big, 0) as p:
            assert p.partial
            with pytest.raises(mcache.InvalidArgument, match="partial"):
                p.state_dict()
            host = big.state_dict()
            names = []
            for name, tensor in p.stream():
                assert torch.equal(tensor, host[name])
                names.append(name)
            assert sorted(names) == sorted(host)
            kept = p.stream()  # still referenced once exhausted: it gives the staging ring back then
            assert len(list(kept)) == len(host) == len(kept)
            assert [name for name, _ in p.stream()] == [name for name, _ in p.stream()]
            with pytest.raises(StopIteration):
                next(kept)


def test_a_budget_that_cannot_be_met_in_time_is_budget_exhausted_and_leaves_nothing_held(rt):
    rt.models.add_synthetic("big", layers(32))
    s, other = rt.session("a"), rt.session("b")
    with s.acquire("te"), s.acquire("tr"):
        # vae and big are 40 MiB more beside a's 40 in 64: all or none, and none it is.
        with pytest.raises(mcache.BudgetExhausted) as e:
            other.acquire_all(["vae", "big"], wait=0.05)
        assert "MiB" in str(e.value) or "bytes" in str(e.value)
        assert rt.stats()["ram"]["leased_bytes"] == 40 * MiB
    assert rt.stats()["ram"]["leased_bytes"] == 0


def test_a_tensor_kept_past_its_pin_keeps_its_memory_and_its_values(rt):
    s = rt.session()
    with s.acquire("te") as te, s.pin(te, 0) as p:
        name = sorted(p.state_dict())[0]
        kept = p.tensor(name)
        expected = kept.clone()
    s.offload(0)  # the device copy is evicted and its memory counted free
    s.trim_ram()
    with s.acquire("tr") as tr, s.pin(tr, 0) as p2:  # new copies take the device's memory again
        for t in p2.state_dict().values():
            t.fill_(-1.0)
    assert torch.equal(kept, expected)  # never reused under the tensor kept


def test_sessions_on_many_threads_share_the_cache_without_errors(rt):
    failures = []

    def worker(i):
        try:
            s = rt.session("thread-%d" % i)
            for _ in range(20):
                model = ["te", "tr", "vae"][i % 3]
                with s.acquire(model, wait=10) as l, s.pin(l, 0, wait=10) as p:
                    if p.partial:  # the device was busy with others: the rest streams
                        assert len([name for name, _ in p.stream()]) == 4
                    else:
                        assert len(p.state_dict()) == 4
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert rt.stats()["ram"]["leased_bytes"] == 0


def test_threads_may_share_one_session(rt):
    s = rt.session("shared")
    failures = []

    def worker():
        try:
            for _ in range(20):
                with s.acquire("vae", wait=10) as l, s.pin(l, "cpu", wait=10):
                    pass
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_release_from_a_finalizer_or_after_close_is_safe():
    rt = mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}])
    rt.models.add_synthetic("m", layers(4))
    s = rt.session()
    lease = s.acquire("m")
    pin = s.pin(lease, 0)
    del lease  # dropped while pinned: released by its finalizer after the pin goes
    gc.collect()
    rt.close()
    assert rt.closed
    pin.release()  # after close: still ends the pin, raises nothing
    pin.release()  # twice: does nothing
    with pytest.raises(mcache.ShuttingDown):
        rt.session()
    with pytest.raises(mcache.ShuttingDown):
        s.acquire("m")


def test_stats_and_prometheus_text_describe_the_tiers(rt):
    s = rt.session("stats")
    with s.acquire("te"):
        stats = rt.stats()
        assert stats["ram"]["leased_bytes"] == 16 * MiB
        assert any(m["model"] == "te" for m in stats["ram"]["models"])
    metrics = rt.stats()["ram"]["metrics"]  # every counter and level, as /metrics names them
    assert metrics["loads_total"] >= 1 and metrics["loads_stopped_total"] == 0 and metrics["leases_active"] == 0
    text = rt.prometheus_text()
    assert "mcache_ram_budget_bytes" in text
    assert "mcache_ram_loads_stopped_total 0" in text


def test_close_takes_a_grace_for_running_loads_and_copies_and_refuses_a_bad_one():
    rt = mcache.Runtime(ram_budget=16 * MiB, devices=[{"kind": "simulated", "vram_budget": 8 * MiB}])
    for bad in (-1.0, float("nan"), 1e9, True, "5"):
        with pytest.raises(mcache.InvalidArgument):
            rt.close(grace=bad)
    assert not rt.closed  # a refused close changes nothing
    assert rt.close(grace=0.5) is True  # nothing was running
    assert rt.close() is True  # a second close has nothing to do
    assert rt.closed


def test_models_from_files_and_folders():
    from safetensors_writer import write_safetensors

    with tempfile.TemporaryDirectory() as folder:
        write_safetensors(os.path.join(folder, "a.safetensors"), {"w": torch.arange(12, dtype=torch.float32).view(3, 4)})
        os.makedirs(os.path.join(folder, "sub"))
        write_safetensors(os.path.join(folder, "sub", "b.safetensors"), {"x": torch.ones(5)})
        with mcache.Runtime(ram_budget=16 * MiB, devices=[{"kind": "simulated", "vram_budget": 8 * MiB}]) as rt:
            assert sorted(rt.models.add_folder(folder)) == ["a", "sub/b"]
            assert "a" in rt.models and len(rt.models) == 2
            s = rt.session()
            with s.acquire("a") as a, s.pin(a, 0) as p:
                assert torch.equal(p.tensor("w"), torch.arange(12, dtype=torch.float32).view(3, 4))


def test_a_file_whose_name_is_not_utf8_is_refused_with_its_name_escaped_and_status_still_works():
    from safetensors_writer import write_safetensors

    with tempfile.TemporaryDirectory() as folder:
        write_safetensors(os.path.join(os.fsencode(folder), b"caf\xe9.safetensors"), {"w": torch.ones(4)})
        with mcache.Runtime(ram_budget=16 * MiB, devices=[{"kind": "simulated", "vram_budget": 8 * MiB}]) as rt:
            with pytest.raises(mcache.InvalidArgument, match=r"caf\\xe9.*not printable UTF-8"):
                rt.models.add_folder(folder)
            assert rt.models.ids() == []  # all or nothing: the folder registered nothing
            assert rt.stats()["catalog_models"] == 0


def test_a_torch_module_runs_on_the_pins_tensors_without_a_copy(rt):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    with tempfile.TemporaryDirectory() as folder:
        from safetensors_writer import write_safetensors

        reference = Net()
        path = os.path.join(folder, "net.safetensors")
        write_safetensors(path, {k: v.detach() for k, v in reference.state_dict().items()})
        rt.models.add_file("net", path)
        s = rt.session()
        with s.acquire("net") as l, s.pin(l, 0) as p:
            net = Net()
            assert mcache.load_module(net, p) == ([], [])
            assert net.fc.weight.data_ptr() == p.tensor("fc.weight").data_ptr()
            x = torch.randn(2, 4)
            assert torch.allclose(net(x), reference(x))
            with pytest.raises(mcache.InvalidArgument, match="does not match"):
                mcache.load_module(torch.nn.Linear(4, 3), p)


def test_a_handle_released_on_one_thread_while_another_reads_it_fails_cleanly(rt):
    s = rt.session()
    for _ in range(20):
        lease = s.acquire("vae")
        pin = s.pin(lease, 0)
        outcomes = []

        def reader():
            for _ in range(200):
                try:
                    assert len(pin.state_dict()) == 4 and len(lease.state_dict()) == 4
                except (mcache.InvalidPin, mcache.InvalidLease):
                    outcomes.append("released")
                    return
            outcomes.append("read")

        t = threading.Thread(target=reader)
        t.start()
        pin.release()
        lease.release()
        t.join()
        assert outcomes in (["read"], ["released"])
    assert rt.stats()["ram"]["leased_bytes"] == 0


def test_load_module_gives_tied_parameters_one_tensor_and_skips_non_persistent_buffers(rt):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied: stored once, as "a.weight"
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

    from safetensors_writer import write_safetensors

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tied.safetensors")
        reference = Tied()
        write_safetensors(path, {k: v.detach() for k, v in reference.state_dict().items() if k != "b.weight"})
        rt.models.add_file("tied", path)
        s = rt.session()
        with s.acquire("tied") as l, s.pin(l, 0) as p:
            net = Tied()
            assert mcache.load_module(net, p) == ([], [])
            assert net.a.weight is net.b.weight
            assert net.b.weight.data_ptr() == p.tensor("a.weight").data_ptr()


def test_a_model_replaced_or_removed_while_held_stays_valid_for_its_holder(rt):
    s = rt.session()
    with s.acquire("te") as old:
        before = old.state_dict()
        first = sorted(before)[0]
        value = float(before[first][0])
        rt.models.replace_synthetic("te", layers(16), seed=9)
        with s.acquire("te") as new:
            assert new.model == "te#2"
            assert float(new.tensor(first)[0]) != value
        assert float(old.tensor(first)[0]) == value
        rt.models.remove("vae")
        with pytest.raises(mcache.UnknownModel):
            s.acquire("vae")
    with pytest.raises(mcache.UnknownModel):
        rt.models.remove("vae")
    assert "vae" not in rt.models


def test_the_scheduler_runs_python_stages_with_their_models_pinned(rt):
    seen = []

    def encode(ctx):
        assert ctx.torch_device == torch.device("cpu")  # a CPU stage
        seen.append(("encode", ctx.device, sorted(ctx.state_dict("te"))))

    def denoise(ctx):
        names = list(ctx.state_dict("tr")) if not ctx.partial("tr") else [name for name, _ in ctx.stream("tr")]
        seen.append(("denoise", ctx.device, len(names)))

    with rt.scheduler(workers_per_device=1) as sched:
        jobs = [sched.submit([mcache.Stage("te", encode, device="cpu"), mcache.Stage(["tr"], denoise, device=0)],
                             name="job-%d" % i) for i in range(3)]
        results = [j.wait(timeout=30) for j in jobs]
    assert [r["state"] for r in results] == ["done"] * 3
    assert [s[0] for s in seen].count("encode") == 3 and [s[0] for s in seen].count("denoise") == 3
    assert all(s[1] == "cpu" for s in seen if s[0] == "encode")
    assert rt.stats()["ram"]["leased_bytes"] == 0


def test_a_stage_streams_a_model_larger_than_its_device_one_step_at_a_time_and_not_after_it_ends():
    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 12 * MiB}]) as rt:
        rt.models.add_synthetic("big", layers(24, count=8), seed=5)
        with rt.session().acquire("big") as big:
            expected = {name: t.clone() for name, t in big.state_dict().items()}
        seen, kept = [], []

        def denoise(ctx):
            assert ctx.partial("big")
            stream = ctx.stream("big")
            assert len(stream) == 8
            for name, t in stream:  # a streamed tensor is compared before the next step refills its slot
                seen.append((name, torch.equal(t, expected[name])))
            kept.append(ctx.stream("big"))  # exhausted, the first gave the ring back: a second may stream
            next(kept[0])  # and is left half way

        with rt.scheduler() as sched:
            status = sched.submit([mcache.Stage("big", denoise, device=0)]).wait(timeout=30)
        assert status["state"] == "done", status
        assert sorted(name for name, _ in seen) == sorted(expected) and all(same for _, same in seen)
        with pytest.raises(mcache.InvalidPin, match="has ended"):
            next(kept[0])


def test_ctrl_c_ends_a_main_thread_wait_for_room_and_leaves_nothing_queued_or_held():
    import _thread

    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB,
                                                       "partial_loading": False}]) as rt:
        rt.models.add_synthetic("big", layers(48))
        rt.models.add_synthetic("other", layers(32))
        rt.models.add_synthetic("small", layers(8))
        holder, waiter = rt.session("holder"), rt.session("waiter")

        def interrupted(call):
            timer = threading.Timer(0.3, _thread.interrupt_main)  # as Ctrl-C would, on the main thread
            timer.start()
            start = time.monotonic()
            try:
                with pytest.raises(KeyboardInterrupt):
                    call()
            finally:
                timer.cancel()
            return time.monotonic() - start

        big = holder.acquire("big")  # 48 of 64 MiB leased: 'other' waits for room
        assert interrupted(lambda: waiter.acquire("other", wait=60)) < 10
        assert rt.stats()["ram"]["waiting"] == 0
        big.release()
        with holder.acquire("other") as other, holder.acquire("small") as small:
            with holder.pin(other, 0):  # 32 of 32 MiB pinned: 'small' waits for room on the device
                assert interrupted(lambda: holder.pin(small, 0, wait=60)) < 10
                assert rt.stats()["devices"][0]["waiting"] == 0
            with holder.pin(small, 0) as p:  # the lease is intact and the device's queue is not stuck
                assert p.device == 0
        assert rt.stats()["ram"]["leased_bytes"] == 0


def test_ctrl_c_reaches_a_main_thread_call_waiting_for_another_threads_call_on_the_same_session():
    import _thread

    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}]) as rt:
        rt.models.add_synthetic("big", layers(48))
        rt.models.add_synthetic("other", layers(32))
        holder, shared = rt.session("holder"), rt.session("shared")
        big = holder.acquire("big")
        waiting = threading.Thread(target=lambda: pytest.raises(mcache.BudgetExhausted, shared.acquire, "other", wait=3))
        waiting.start()  # holds the shared session for 3 s
        time.sleep(0.2)
        timer = threading.Timer(0.2, _thread.interrupt_main)
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            shared.acquire("big", wait=60)  # waits for the session's mutex first
        assert time.monotonic() - start < 2
        timer = threading.Timer(0.2, _thread.interrupt_main)
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            shared.offload(0)  # only frees memory, but it too waits for the session's mutex
        assert time.monotonic() - start < 2
        waiting.join()
        big.release()
        assert rt.stats()["ram"]["leased_bytes"] == 0


def test_a_sigint_handler_of_the_programs_own_is_left_alone_and_runs_when_the_wait_ends():
    import _thread
    import signal

    import faulthandler

    seen = []
    extra = None

    def handler(signum, frame):  # uses the waiting call's own session: it must not run under its mutex
        seen.append((signum, time.monotonic() - start))
        extra.release()

    previous = signal.signal(signal.SIGINT, handler)
    faulthandler.dump_traceback_later(60, exit=True)  # a deadlock ends the run instead of hanging it
    try:
        with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}]) as rt:
            rt.models.add_synthetic("big", layers(40))
            rt.models.add_synthetic("small", layers(4))
            rt.models.add_synthetic("other", layers(32))
            s = rt.session()
            with s.acquire("big"):
                extra = s.acquire("small")
                timer = threading.Timer(0.1, _thread.interrupt_main)
                timer.start()
                start = time.monotonic()
                with pytest.raises(mcache.BudgetExhausted):
                    s.acquire("other", wait=0.6)  # not cut short: the program's handler only notes it
                timer.join()
            assert len(seen) == 1 and seen[0][0] == signal.SIGINT
            assert seen[0][1] >= 0.5  # ran when the call returned, not inside its wait
            assert not extra.held
            with pytest.raises(mcache.InvalidLease, match="not None"):
                s.pin(None, 0)
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGINT, previous)


def test_counts_paths_and_devices_in_their_python_forms():
    import pathlib

    import numpy

    from safetensors_writer import write_safetensors

    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB},
                                                      {"kind": "simulated", "vram_budget": 32 * MiB}]) as rt:
        rt.models.add_synthetic("te", layers(4))
        s = rt.session()
        with pytest.raises(mcache.InvalidArgument, match="seed must not be negative"):
            rt.models.add_synthetic("x", layers(4), seed=-1)
        with pytest.raises(mcache.InvalidArgument, match="bytes must not be negative"):
            s.offload(0, bytes=-1)
        with pytest.raises(mcache.InvalidArgument, match="bytes must not be negative"):
            s.trim_ram(bytes=-1)
        with pytest.raises(mcache.InvalidDevice):
            s.offload(-1)  # the CPU's pins are not a device to offload
        with s.acquire("te") as te:
            with pytest.raises(mcache.InvalidArgument, match="working must not be negative"):
                s.pin(te, 0, working=-1)
            with s.pin(te, numpy.int64(1)) as p:  # numpy's integers are indices too
                assert p.device == 1
                stream = p.stream()
                assert len(list(stream)) == 4
            with pytest.raises(StopIteration):  # exhausted stays exhausted after its pin ended
                next(stream)
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / "w.safetensors"
            write_safetensors(str(path), {"w": torch.ones(4)})
            assert rt.models.add_file("w", path) == "w"
            manifest = pathlib.Path(folder) / "manifest.json"
            manifest.write_bytes(b'{"models": [{"id": "caf\xe9"}]}')
            with pytest.raises(mcache.BadFile, match="not valid JSON"):
                rt.models.add_manifest(manifest)


def test_a_bool_is_not_a_device_index():
    with mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB},
                                                      {"kind": "simulated", "vram_budget": 32 * MiB}]) as rt:
        rt.models.add_synthetic("te", layers(4))
        s = rt.session()
        with s.acquire("te") as te:
            with pytest.raises(mcache.InvalidDevice, match="True"):
                s.pin(te, True)
            with pytest.raises(mcache.InvalidDevice, match="True"):
                s.offload(True)
            with s.pin(te, 1) as p:
                assert p.device == 1
        with rt.scheduler() as sched:
            with pytest.raises(mcache.InvalidDevice, match="False"):
                sched.submit([mcache.Stage("te", lambda ctx: None, device=False)])
            with pytest.raises(mcache.InvalidArgument, match="not callable"):
                sched.submit([mcache.Stage("te", lambda ctx: None), mcache.Stage("te", "denoise")])
        assert rt.stats()["ram"]["leased_bytes"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch sees no CUDA GPU (run by scripts/gpu-check.sh there)")
def test_on_a_gpu_pins_hand_out_cuda_tensors_and_a_stage_runs_with_its_gpu_current():
    # The last GPU: where there are two, not the one current by default, so that the stage's half checks
    # the device guard; with one GPU only the pins' half can tell a mistake.
    gpu = torch.cuda.device_count() - 1
    runtime = mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "cuda", "index": gpu, "vram_budget": 32 * MiB}])
    try:
        runtime.models.add_synthetic("te", layers(16), seed=1)
        s = runtime.session()
        with s.acquire("te") as te, s.pin(te, 0) as p:
            assert p.torch_device == torch.device("cuda", gpu)
            host, device = te.state_dict(), p.state_dict()
            for name, t in device.items():
                assert t.device == torch.device("cuda", gpu)
                assert torch.equal(t.cpu(), host[name])
                assert torch.equal((t * 2).cpu(), host[name] * 2)  # torch's own kernels read the cache's memory
        del s
        seen = []

        def work(ctx):
            seen.append((ctx.torch_device, torch.cuda.current_device(), torch.empty(1, device="cuda").device))

        with runtime.scheduler() as sched:
            status = sched.submit([mcache.Stage("te", work, device=0)]).wait(timeout=60)
            assert status is not None and status["state"] == "done", status
        assert seen == [(torch.device("cuda", gpu), gpu, torch.device("cuda", gpu))]
    finally:
        runtime.close()


def test_a_stage_that_raises_fails_its_job_with_work_failed_and_the_text(rt):
    kept = []

    def broken(ctx):
        kept.append(ctx)
        raise ValueError("weights upside down")

    with rt.scheduler() as sched:
        status = sched.submit([mcache.Stage("vae", broken)]).wait(timeout=30)
        assert status["state"] == "failed" and status["code"] == "work_failed"
        assert "weights upside down" in status["error"]
        with pytest.raises(mcache.UnknownModel):
            sched.submit([mcache.Stage("nope", broken)])
    with pytest.raises(mcache.InvalidArgument, match="ended"):
        kept[0].state_dict("vae")  # the context is valid only while its stage runs


def test_a_cancelled_scheduled_job_ends_cancelled(rt):
    started = threading.Event()
    release = threading.Event()

    def slow(ctx):
        started.set()
        while not ctx.cancelled and not release.is_set():
            release.wait(0.01)

    with rt.scheduler() as sched:
        job = sched.submit([mcache.Stage("vae", slow)])
        assert started.wait(10)
        job.cancel()
        status = job.wait(timeout=30)
        assert status["state"] == "cancelled" and status["code"] == "cancelled"


def test_a_scheduler_whose_last_reference_goes_inside_its_own_stage_ends_without_hanging(rt):
    holder = {}

    def work(ctx):
        holder.clear()  # the last reference to the scheduler goes here, on one of its own workers

    sched = rt.scheduler()
    job = sched.submit([mcache.Stage("vae", work)])
    holder["scheduler"] = sched
    del sched
    status = job.wait(timeout=30)
    assert status is not None  # ended, not hung
    # Ending the scheduler stops what runs, but this stage's work returned without being told: done.
    assert status["state"] == "done"


def test_closing_a_scheduler_while_another_thread_submits_waits_for_its_running_job_and_hangs_nothing():
    # The submit's own reference to the scheduler could be its last one: that submit then ended the
    # scheduler with the GIL held while a running Python stage waited for the GIL (a hang, 3 of 3 runs).
    rt = mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}])
    rt.models.add_synthetic("m", layers(1))
    tiny = ["tiny%d" % i for i in range(100)]
    for name in tiny:
        rt.models.add_synthetic(name, [1])
    sched = rt.scheduler(cpu_workers=1)
    started = threading.Event()

    def busy(ctx):  # Python work: it needs the GIL to finish
        started.set()
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            pass

    running = sched.submit([mcache.Stage("m", busy, device="cpu")])
    assert started.wait(10)
    slow_to_check = [mcache.Stage(tiny, lambda ctx: None, device=0) for _ in range(3000)]
    submitted = {}

    def submitter():
        try:
            submitted["job"] = sched.submit(slow_to_check)
        except mcache.ShuttingDown:
            submitted["job"] = None

    other = threading.Thread(target=submitter, daemon=True)
    other.start()
    time.sleep(0.001)
    sched.close()
    assert running.status()["state"] != "running"  # close waited for it
    other.join(20)
    assert not other.is_alive(), "submit hung"
    assert running.wait(5)["state"] == "done"  # its work finished without looking at ctx.cancelled
    if submitted.get("job") is not None:
        assert submitted["job"].wait(5)["state"] == "cancelled"
    rt.close()


def test_a_synthetic_model_of_a_negative_or_wrapping_size_is_refused_when_made():
    rt = mcache.Runtime(ram_budget=64 * MiB, devices=[{"kind": "simulated", "vram_budget": 32 * MiB}])
    for numels in ([-5, 10], [2 ** 62 + 1], [2 ** 62]):
        with pytest.raises(mcache.InvalidArgument):
            rt.models.add_synthetic("bad", numels)
    assert "bad" not in rt.models.ids()
    rt.close()


def test_numbers_a_field_cannot_hold_are_invalid_argument_not_a_bare_runtime_error(rt):
    s = rt.session()
    with s.acquire("te") as lease:
        with pytest.raises(mcache.InvalidArgument):
            s.pin(lease, 2 ** 31)
    sched = rt.scheduler()
    for stage in (mcache.Stage("te", lambda ctx: None, device=2 ** 40),
                  mcache.Stage("te", lambda ctx: None, working=-1),
                  mcache.Stage("te", lambda ctx: None, working=2 ** 64)):
        with pytest.raises(mcache.InvalidArgument):
            sched.submit([stage])
    sched.close()


def test_numbers_of_the_wrong_kind_or_size_are_invalid_argument_and_a_fifo_or_a_folder_is_bad_file(rt):
    import numpy

    s = rt.session()
    with s.acquire("te") as te:
        for working in (2**64, True, "1", float("nan")):
            with pytest.raises(mcache.InvalidArgument, match="working"):
                s.pin(te, 0, working=working)
        for wait in (True, float("nan"), "1", -1, 10**6):
            with pytest.raises(mcache.InvalidArgument, match="wait"):
                s.acquire("te", wait=wait)
        with s.pin(te, 0, working=numpy.int64(16), wait=numpy.float64(0.5)):
            pass
    with pytest.raises(mcache.InvalidArgument, match="bytes"):
        s.offload(0, bytes=2**64)
    with pytest.raises(mcache.InvalidArgument, match="seed"):
        rt.models.add_synthetic("x", layers(4), seed=2**64)
    with pytest.raises(mcache.InvalidArgument, match="size"):
        rt.models.add_synthetic("x", [float("nan")])
    with pytest.raises(mcache.InvalidArgument, match="whole number"):
        rt.models.add_synthetic("x", [1.5])
    assert rt.models.add_synthetic("whole", [1e3, 2.0 * 2**10]) == "whole"  # a whole float is that integer
    with pytest.raises(mcache.InvalidArgument, match="wait_for_room"):
        rt.scheduler(wait_for_room=None)
    with rt.scheduler() as sched:
        with pytest.raises(mcache.InvalidArgument, match="priority"):
            sched.submit([mcache.Stage("te", lambda ctx: None)], priority=2**40)
        with pytest.raises(mcache.InvalidArgument, match="not a Stage"):
            sched.submit([object()])
        with pytest.raises(mcache.InvalidArgument, match="working"):
            sched.submit([mcache.Stage("te", lambda ctx: None, working=float("nan"))])
        assert sched.submit((mcache.Stage("te", lambda ctx: None),)).wait(10)["state"] == "done"
    with tempfile.TemporaryDirectory() as folder:
        fifo = os.path.join(folder, "f.safetensors")
        os.mkfifo(fifo)  # nothing writes to it: opening it to read would block for ever
        with pytest.raises(mcache.BadFile, match="not a regular file"):
            rt.models.add_file("f", fifo)
        with pytest.raises(mcache.BadFile, match="not a regular file"):
            rt.models.add_manifest(folder)
        from safetensors_writer import write_safetensors

        write_safetensors(os.path.join(folder, "m.safetensors"), {"w": torch.zeros(4)})
        for device in (5, -7, "cpu"):  # a preference for a GPU this runtime does not have is a mistake
            with pytest.raises(mcache.InvalidDevice, match="preferred device"):
                rt.models.add_file("m", os.path.join(folder, "m.safetensors"), device=device)
        assert rt.models.add_file("m", os.path.join(folder, "m.safetensors"), device=0) == "m"
    assert rt.stats()["ram"]["leased_bytes"] == 0
