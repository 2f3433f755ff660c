"""mcache: a model cache over disk, host RAM and GPUs, for PyTorch servers.

Catalog lookup is separate from loading, and "in use" is explicit:

    import mcache
    with mcache.Runtime(ram_budget="24GiB", devices="all") as rt:
        rt.models.add_folder("/models/flux")
        s = rt.session("worker-1")
        with s.acquire("flux/t5") as te, s.acquire("flux/transformer") as tr, \\
             s.pin(te, "cpu") as p1, s.pin(tr, 0, working=2 << 30) as p2:
            weights = p2.state_dict()        # torch.Tensors: the cache's own memory, no copy

A lease keeps a model in RAM until it is released; a pin keeps it on a device (fully or partly resident)
until it is released. Both are context managers and release themselves on exit, exceptions included.
Every failure is an `mcache.Error` subclass named after its code (`mcache.BudgetExhausted`, ...), with
`.code` and an actionable message. Ownership, threads and tensor lifetimes: Note [The Python binding] in
python/module.cpp (a tensor keeps the memory it views alive; a streamed tensor that was not resident is
valid until the stream's next step; calls on one session take turns, so give each thread its own session
where they should not wait on each other).
"""

import json as _json
import os as _os

import torch as _torch  # noqa: F401  (the extension needs LibTorch's Python side loaded first)

from . import _core

__all__ = ["Runtime", "Session", "Lease", "Pin", "Stream", "Stage", "Scheduler", "Job", "StageContext", "Error",
           "load_module"]


class Error(Exception):
    """A request failed. `code` is the error's name (e.g. "budget_exhausted"); str(e) says what was
    asked, what was free, and what to change."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _class_name(code):
    return "".join(part.capitalize() for part in code.split("_"))


_error_classes = {}
for _code in _core.error_codes:
    _cls = type(_class_name(_code), (Error,), {"__doc__": "mcache error `%s`." % _code, "__module__": __name__})
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
    _error_classes[_code] = _cls
_core._set_error_classes(_error_classes)

Session = _core.Session
# The fleet's router, where the package was built with the fleet (MCACHE_BUILD_FLEET: it needs CAF's TLS layer).
if hasattr(_core, "Router"):
    Router = _core.Router
    __all__.append("Router")
    Router.__doc__ = """A router over fleet nodes (mcache-node processes; README, "Many machines"):

    r = mcache.Router(["127.0.0.1:7001", "127.0.0.1:7002"])      # tls_cert=, tls_key=, tls_ca= across hosts
    r.wait_for_nodes(2)
    result = r.run("sdxl", ["clip_l", "sdxl_clip_g", "sdxl_unet", "sdxl_vae"], {"steps": "30"})
    result["node"], result["output"], result["attempt"]

Each job goes to the node where it moves the fewest bytes; a node lost mid-job has its job sent to another
node once. `run` waits without the GIL and returns the result, or raises the Error subclass of its code
(NodeUnavailable, UnknownPipeline, UnknownModel, InvalidArgument, ...). `stats()` says what each node did."""
Lease = _core.Lease
Pin = _core.Pin
Stream = _core.Stream
Scheduler = _core.Scheduler
Job = _core.Job
StageContext = _core.StageContext


class Stage:
    """One stage of a scheduled job: `models` leased together and pinned on `device` (an index, "cpu", or
    "any" GPU), `working` bytes of working memory with the first pin, then `work(ctx)` runs on a worker
    thread with ctx.state_dict(model) / ctx.tensor(model, name) / ctx.stream(model) / ctx.cancelled."""

    def __init__(self, models, work, device="any", working=0, name=""):
        self.models = [models] if isinstance(models, str) else list(models)
        self.work = work
        self.device = device
        self.working = working
        self.name = name


def _paths(files):
    """One path or several, as strings (pathlib.Path and other os.PathLike too)."""
    if isinstance(files, (str, _os.PathLike)):
        files = [files]
    return [_os.fspath(f) for f in files]


class Models:
    """The runtime's catalog. Registering reads file headers only; nothing loads until an acquire."""

    def __init__(self, core):
        self._core = core

    def add_synthetic(self, id, sizes, seed=0):
        """A model of float32 tensors with `sizes` elements each, filled from `seed` (tests, demos)."""
        return self._core.add_synthetic(id, sizes, seed)

    def add_file(self, id, files, execution_order=(), required=(), device=None):
        """A model from one safetensors file or several shards (paths: str or os.PathLike)."""
        return self._core.add_file(id, _paths(files), list(execution_order), list(required), device, False)

    def replace_file(self, id, files, execution_order=(), required=(), device=None):
        """Makes `id` mean these files from now on (a file changed on disk, registered again). Copies of the
        old model held now stay valid until released; new acquires get the new one."""
        return self._core.add_file(id, _paths(files), list(execution_order), list(required), device, True)

    def replace_synthetic(self, id, sizes, seed=0):
        self._core.replace_synthetic(id, sizes, seed)

    def remove(self, id):
        """Unregisters `id`: new acquires raise UnknownModel; copies held now stay valid until released."""
        self._core.remove(id)

    def add_folder(self, folder):
        """Every model in a folder (single files and sharded checkpoints); returns their ids."""
        return self._core.add_folder(_os.fspath(folder))

    def add_manifest(self, path):
        """The models a manifest.json declares; returns their ids."""
        return self._core.add_manifest(_os.fspath(path))

    def ids(self):
        return self._core.model_ids()

    def describe(self, id):
        return self._core.describe(id)

    def __contains__(self, id):
        return id in self._core.model_ids()

    def __len__(self):
        return len(self._core.model_ids())


class Runtime:
    """One RAM tier and one tier per device. Options are the config file's keys (runtime/config.hpp):
    ram_budget, pinned_budget, keep_ram_copy, keep_alive, default_wait, devices ("all" or a list of
    {"kind": "cuda"|"simulated"|"accelerator", "vram_budget": ..., "working_memory": ...}), ...
    Sizes are bytes or strings like "8GiB"; durations are seconds or strings like "30s"."""

    def __init__(self, config=None, **options):
        merged = dict(config or {})
        merged.update(options)
        self._core = _core.Runtime(_json.dumps(merged))
        self.models = Models(self._core)

    @classmethod
    def from_file(cls, path, **overrides):
        with open(path) as f:
            return cls(_json.load(f), **overrides)

    def session(self, name=""):
        """A holder: what it acquires and pins is released by it. Threads may share one."""
        return self._core.session(name)

    @property
    def device_count(self):
        return self._core.device_count

    def scheduler(self, workers_per_device=1, cpu_workers=1, order="fifo", prefetch=False, wait_for_room=60.0):
        """Runs jobs of stages over the devices (Note [Job lifecycle]): `sched.submit([Stage(...), ...],
        name=, priority=, deadline=)` returns a Job (`wait(timeout)` gives its final status as a dict,
        `cancel()`). Close it (or use `with`) before the runtime; close waits for running jobs."""
        return self._core.scheduler(workers_per_device, cpu_workers, order, prefetch, wait_for_room)

    def stats(self):
        """Every tier's levels and models with their holders, as the HTTP endpoint's /status serves; each
        tier's "metrics" has every counter and level of prometheus_text() by name ("loads_total", ...)."""
        return _json.loads(self._core.status_json())

    def prometheus_text(self):
        return self._core.prometheus_text()

    def close(self, grace=5.0):
        """Shuts down: waiting requests fail with ShuttingDown at once, as do later acquires and pins; later
        releases still end what they held. Loads and copies already running get `grace` seconds to end (a
        disk load nobody waits for stops at its next chunk) and are abandoned after it: False then."""
        return self._core.close(grace)

    @property
    def closed(self):
        return self._core.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def load_module(module, pin, strict=True):
    """Points `module`'s parameters and buffers at a full pin's device tensors, without a copy, so the
    model runs where the cache placed it. Names are the state dict's. Keep the pin held while the module
    runs; the tensors stay valid after it (Note [The Python binding]), but then hold memory the cache has
    already counted as free. Returns the names the pin lacked (missing) and those the module lacked
    (unexpected), as load_state_dict does."""
    tensors = pin.state_dict()
    invalid = _error_classes["invalid_argument"]
    # Every place a tensor lives in the module, tied ones included (a shared Parameter is reachable under
    # several names; each must get the same new one), without non-persistent buffers (not in a state dict).
    places = []  # (name, owner, leaf, current)

    def walk(owner, prefix):
        for leaf, value in owner._parameters.items():
            if value is not None:
                places.append((prefix + leaf, owner, leaf, value))
        for leaf, value in owner._buffers.items():
            if value is not None and leaf not in owner._non_persistent_buffers_set:
                places.append((prefix + leaf, owner, leaf, value))
        for name, child in owner._modules.items():
            if child is not None:
                walk(child, prefix + name + ".")

    walk(module, "")
    by_original = {}
    for name, owner, leaf, current in places:
        by_original.setdefault(id(current), []).append((name, owner, leaf, current))
    plan, missing = [], []
    for group in by_original.values():
        found = [tensors[name] for name, _, _, _ in group if name in tensors]
        if not found:
            missing.extend(name for name, _, _, _ in group)
            continue
        value, current = found[0], group[0][3]
        if tuple(current.shape) != tuple(value.shape) or current.dtype != value.dtype:
            raise invalid("tensor '%s' of model '%s' is %s %s, the module wants %s %s"
                          % (group[0][0], pin.model, value.dtype, tuple(value.shape), current.dtype,
                             tuple(current.shape)), "invalid_argument")
        plan.append((group, value))
    used = {name for group, _ in plan for name, _, _, _ in group}
    unexpected = sorted(set(tensors) - used)
    if strict and (missing or unexpected):
        raise invalid("model '%s' does not match the module: missing %s, unexpected %s"
                      % (pin.model, missing, unexpected), "invalid_argument")
    for group, value in plan:  # checked first: a mismatch leaves the module as it was
        is_parameter = group[0][2] in group[0][1]._parameters
        new = _torch.nn.Parameter(value, requires_grad=False) if is_parameter else value
        for _, owner, leaf, _ in group:
            if is_parameter:
                owner._parameters[leaf] = new
            else:
                owner._buffers[leaf] = new
    return missing, unexpected
