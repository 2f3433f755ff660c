"""mcache.Router over real mcache-node processes on loopback (Note [The fleet], runtime/fleet/router.hpp)."""

import os
import signal
import subprocess
import tempfile
import time

import pytest

import mcache

NODE = os.environ.get("MCACHE_NODE_BINARY", "")
pytestmark = pytest.mark.skipif(not os.path.exists(NODE) or not hasattr(mcache, "Router"),
                                reason="the fleet is not built (mcache-node, mcache.Router)")


class Node:
    """An mcache-node process, stopped by its pid."""

    def __init__(self, name, port=0):
        self.dir = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.dir.name, "port")
        self.log = open(os.path.join(self.dir.name, "log"), "w")
        self.proc = subprocess.Popen([NODE, "--name", name, "--port", str(port), "--port-file", port_file,
                                      "--summary-interval", "20ms"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(port_file):
            assert self.proc.poll() is None and time.time() < deadline, "mcache-node did not start"
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.address = "127.0.0.1:%d" % self.port

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def nodes():
    started = [Node("a"), Node("b")]
    yield started
    for n in started:
        n.stop()


def test_a_router_runs_jobs_on_the_nodes_and_sends_repeats_where_the_models_are(nodes):
    r = mcache.Router([n.address for n in nodes], wait_for_node=5)
    assert r.wait_for_nodes(2) == 2
    first = r.run("sd15", ["clip_l", "sd15_unet", "sd15_vae"], {"steps": "4"})
    assert first["node"] in ("a", "b") and first["attempt"] == 1
    assert "sd15 done in 4 steps" in first["output"]
    for _ in range(3):
        assert r.run("sd15", ["clip_l", "sd15_unet", "sd15_vae"], {"steps": "4"})["node"] == first["node"]
    st = r.stats()
    assert st["done"] == 4 and st["failed"] == 0
    assert sorted(n["name"] for n in st["nodes"]) == ["a", "b"]
    assert all(n["reported"] and n["jobs_failed"] == 0 for n in st["nodes"])


def test_bad_jobs_raise_the_error_of_their_code(nodes):
    r = mcache.Router([n.address for n in nodes], wait_for_node=0.3)
    r.wait_for_nodes(2)
    with pytest.raises(mcache.InvalidArgument):
        r.run("sd15", ["clip_l"])  # sd15 takes three models, one per role
    with pytest.raises(mcache.UnknownModel):
        r.run("sd15", ["clip_l", "no_such_unet", "sd15_vae"])
    with pytest.raises(mcache.UnknownPipeline, match="no node serves pipeline 'no_such_pipeline'"):
        r.run("no_such_pipeline")  # every node said what it serves: at once
    with pytest.raises(mcache.InvalidArgument):
        mcache.Router(["10.0.0.1:7001"])  # beyond loopback without TLS
    with pytest.raises(mcache.InvalidArgument):
        mcache.Router(["nohost"])


def test_a_node_killed_mid_job_has_its_job_finished_by_the_other_node(nodes):
    r = mcache.Router([n.address for n in nodes])
    assert r.wait_for_nodes(2) == 2
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.update(r.run("llm", ["llm_8b"], {"steps": "400"})))
    t.start()
    deadline = time.time() + 10
    while sum(n["sent"] for n in r.stats()["nodes"]) == 0:
        assert time.time() < deadline
        time.sleep(0.01)
    victim = [i for i, n in enumerate(r.stats()["nodes"]) if n["sent"] == 1][0]
    nodes[victim].stop(signal.SIGKILL)
    t.join(30)
    assert not t.is_alive()
    assert result["attempt"] == 2
    assert result["node"] == ("b" if victim == 0 else "a")
    assert r.stats()["resent"] == 1
