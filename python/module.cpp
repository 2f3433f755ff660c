// Note [The Python binding]: `mcache._core`, wrapped by the `mcache` package (python/mcache/__init__.py).
//
// Ownership. Python objects hold C++ objects through shared boxes: a lease or pin holds its session's box,
// a session holds its runtime's box. So whatever order Python frees them in, a handle is released before
// its session ends and a session ends before its runtime, as the C++ API requires. `Runtime.close()`
// shuts the runtime down at once (every later acquire or pin fails with ShuttingDown; later releases
// still end what they held); the C++ runtime itself is destroyed when the last object made from it goes.
//
// Threads. Every call that may wait (acquire, pin, release, offload, stats) lets the GIL go first, then
// takes its session's mutex: a session is one CAF holder, used by one thread at a time, and Python
// threads may share it. The mutex is always taken after the GIL is let go and let go before the GIL is
// taken back, so a finalizer releasing a handle on one thread can never deadlock with a call on another.
//
// Tensors. A tensor handed to Python (`Pin.tensor`, `Pin.state_dict`, `Lease.tensor`) is the cache's own
// memory, no copy, and it keeps that memory alive: the buffer it views goes back to its tier's cache only
// when the last tensor viewing it goes. So a tensor kept past its pin never reads freed or reused memory;
// the price is that, while it lives, it holds memory the tier has already counted as free. The one
// exception is a streamed tensor that was not resident: it lives in one of the pin's staging slots, which
// the stream refills as it moves on, so it is valid until the next step of the stream (clone it to keep it).
//
// The scheduler. A stage's work is a Python callable, run on a scheduler worker thread with the GIL taken
// for it, and given a `StageContext` that is valid only while the stage runs (its calls raise afterwards).
// A Python exception in the work fails the job with `work_failed` and the exception's text; it is turned
// into text while the GIL is held, since the scheduler handles it on a thread that does not hold it.
// The C++ jobs hold ids of their Python callables, never the callables: those stay in the scheduler's
// `stage_works`, touched only with the GIL, so no Python object is dropped on an actor thread.
// `Scheduler.close()` (or leaving its `with`) waits for running jobs with the GIL let go, so their work
// can finish; if the last reference to a scheduler goes inside one of its own stages, another thread
// ends it once the stage has returned; schedulers still open at interpreter exit are closed by an
// `atexit` hook, while threads can still take the GIL. A job handle keeps its runtime alive.
//
// Sharing. Calls on one session take turns, waits included: a thread's release waits while another
// thread's acquire on the same session waits for room. Give each thread its own session where they
// should not wait on each other (sessions are cheap).
//
// The files: binding.hpp (boxes, the GIL, arguments, errors), signals.hpp (Note [Ctrl-C while waiting]),
// handles.hpp (leases, pins, streams, sessions), scheduler_binding.hpp (stages and jobs), and this one
// (the runtime, its catalog, and the module).

#include "python/handles.hpp"
#include "python/scheduler_binding.hpp"
#include "python/signals.hpp"
#include "runtime/config.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/model_files.hpp"
#include "runtime/metrics.hpp"

#include <chrono>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mcache::python {
namespace {

/// A synthetic model's tensor sizes (elements each).
std::vector<int64_t> sizes_of(const py::object& numels) {
  if (!py::isinstance<py::iterable>(numels) || py::isinstance<py::str>(numels) || py::isinstance<py::bytes>(numels))
    fail(errc::invalid_argument, "sizes are a list of element counts, not " + py::repr(numels).cast<std::string>());
  std::vector<int64_t> out;
  for (const auto& n : py::iter(numels))
    out.push_back(integer_of(n, "a tensor's size", 0, std::numeric_limits<int64_t>::max()));
  return out;
}

class py_runtime {
public:
  explicit py_runtime(const std::string& config_json) {
    auto options = options_from_json(config_json);
    box_ = std::make_shared<runtime_box>();
    without_gil unlocked;
    box_->rt = std::make_unique<runtime>(options);
  }

  /// The runtime's box, shared: a call that lets the GIL go keeps the runtime alive through a close().
  std::shared_ptr<runtime_box> box() const {
    auto box = box_;
    if (!box || !box->rt)
      fail(errc::shutting_down, "the runtime is closed");
    return box;
  }
  runtime& rt() const { return *box()->rt; }  // only while the GIL is held

  py_session session(const std::string& name) {
    auto owner = box();
    if (owner->rt->stopped())
      fail(errc::shutting_down, "the runtime is closed");
    auto box = std::make_shared<session_box>();
    box->owner = owner;
    {
      without_gil unlocked;
      box->s.emplace(owner->rt->open_session(name));
      box->s->set_wait_check(python_signal_pending, signal_slice);  // Note [Ctrl-C while waiting]
    }
    return py_session{box};
  }

  /// Shuts the runtime down now; it is destroyed when the last object made from it goes.
  bool close(const py::object& grace) {
    auto wait = wait_of(grace, "grace").value_or(std::chrono::seconds(5));  // checked like every wait
    auto box = std::move(box_);  // under the GIL: a second close finds nothing to do
    if (!box)
      return true;
    without_gil unlocked;
    return box->rt->shutdown(wait);
  }
  bool closed() const { return !box_; }

  std::shared_ptr<py_scheduler> make_scheduler(std::size_t workers_per_device, std::size_t cpu_workers,
                                               const std::string& order, bool prefetch, const py::object& wait_for_room) {
    scheduler_options o;
    o.workers_per_device = workers_per_device;
    o.cpu_workers = cpu_workers;
    if (order == "warm_first")
      o.order.order = order_options::policy::warm_first;
    else if (order != "fifo")
      fail(errc::invalid_argument, "order must be \"fifo\" or \"warm_first\", not \"" + order + "\"");
    o.prefetch = prefetch;
    auto wait = wait_of(wait_for_room, "wait_for_room");
    if (!wait)
      fail(errc::invalid_argument, "wait_for_room is a number of seconds, not None");
    o.wait_for_room = *wait;
    return open_scheduler(box(), o);
  }

  std::string status_json() {
    auto owner = box();
    without_gil unlocked;
    return owner->rt->status_json();
  }
  std::string prometheus() {
    auto owner = box();
    without_gil unlocked;
    return prometheus_text(*owner->rt);
  }

  // -- the catalog ------------------------------------------------------------------------------------
  std::string add_synthetic(const std::string& id, const py::object& numels, const py::object& seed) {
    if (auto err = rt().models().add(synthetic_model(id, sizes_of(numels), bytes_of(seed, "seed"))))
      throw request_error(*err);
    return id;
  }
  /// A model's preferred GPU, if any: an index of this runtime's devices ("any" or None: no preference).
  std::optional<device_index> preferred_device_of(const py::object& device) {
    auto where = device_of(device);
    if (where.where == py_device::any)
      return std::nullopt;
    check_preferred_device(where.where == py_device::cpu ? cpu_device : where.number, "");
    return where.number;
  }
  void check_preferred_device(device_index device, const std::string& model) {
    auto count = rt().device_count();
    if (device >= 0 && static_cast<size_t>(device) < count)
      return;
    auto asked = device == cpu_device ? std::string{"\"cpu\""} : std::to_string(device);
    fail(errc::invalid_device, (model.empty() ? std::string{"a"} : "model '" + model + "': its") + " preferred device "
                                 + "is one of this runtime's GPUs, not " + asked
                                 + (count == 0 ? std::string{": it has none"}
                                               : " (it has " + std::to_string(count) + ": 0 to "
                                                   + std::to_string(count - 1) + ")"));
  }
  std::string add_file(const std::string& id, const std::vector<std::string>& files,
                       const std::vector<std::string>& order, const std::vector<std::string>& required,
                       const py::object& device, bool replace) {
    file_model_spec spec{id, files, order, required, preferred_device_of(device)};
    auto d = [&] {
      without_gil unlocked;  // reading headers: other threads go on meanwhile
      return describe_files(spec);
    }();
    if (!succeeded(d))
      throw request_error(std::get<failure>(d));
    if (replace)
      rt().replace_model(std::get<model_descriptor>(d));
    else if (auto err = register_all(rt().models(), {std::get<model_descriptor>(d)}))
      throw request_error(*err);
    return id;
  }
  // Note [Remove and replace]: what is held stays valid until released.
  void remove(const std::string& id) { rt().remove_model(id); }
  void replace_synthetic(const std::string& id, const py::object& numels, const py::object& seed) {
    rt().replace_model(synthetic_model(id, sizes_of(numels), bytes_of(seed, "seed")));
  }
  std::vector<std::string> register_found(outcome<std::vector<model_descriptor>> found) {
    if (!succeeded(found))
      throw request_error(std::get<failure>(found));
    auto& models = std::get<std::vector<model_descriptor>>(found);
    for (const auto& m : models)
      if (m.preferred_device)
        check_preferred_device(*m.preferred_device, m.id);
    if (auto err = register_all(rt().models(), models))
      throw request_error(*err);
    std::vector<std::string> ids;
    for (const auto& m : models)
      ids.push_back(m.id);
    return ids;
  }
  std::vector<std::string> ids() { return rt().models().ids(); }
  py::dict describe(const std::string& id) {
    auto d = rt().models().find(id);
    if (!d)
      fail(errc::unknown_model, "model '" + id + "' is not registered");
    py::dict out;
    out["id"] = d->id;
    out["bytes"] = d->bytes;
    out["source"] = d->source;
    return out;
  }

private:
  std::shared_ptr<runtime_box> box_;
};

/// The C++ blocking client's cycle (acquire, pin, release both) on `model`, `n` times, in seconds per
/// cycle: the baseline the Python bench compares itself with, in the same process.
double cpp_cycle_seconds(py_runtime& r, const std::string& model, device_index device, int n) {
  auto owner = r.box();
  without_gil unlocked;
  auto s = owner->rt->open_session("cpp-bench");
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    auto l = s.acquire(model);
    auto p = s.pin(l, device);
    p.release();
    l.release();
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / n;
}

} // namespace
} // namespace mcache::python

#if MCACHE_PYTHON_FLEET
void bind_fleet(py::module_& m);  // fleet_module.cpp
#endif

PYBIND11_MODULE(_core, m) {
  using namespace mcache;
  using namespace mcache::python;
  py::module_::import("torch");
  main_thread_ident() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  // Close the schedulers still open before the interpreter finalizes (their stages need the GIL).
  py::module_::import("atexit").attr("register")(py::cpp_function([] { close_open_schedulers(); }));
  m.doc() = "mcache's C++ core; use the `mcache` package.";

  bind_errors(m);
  bind_handles(m);
  bind_scheduler(m);

  py::class_<py_runtime>(m, "Runtime")
    .def(py::init<const std::string&>(), py::arg("config_json"))
    .def("session", &py_runtime::session, py::arg("name") = "")
    .def("close", &py_runtime::close, py::arg("grace") = py::float_(5.0))
    .def_property_readonly("closed", &py_runtime::closed)
    .def_property_readonly("device_count", [](py_runtime& r) { return r.rt().device_count(); })
    .def("status_json", &py_runtime::status_json)
    .def("scheduler", &py_runtime::make_scheduler, py::arg("workers_per_device") = 1, py::arg("cpu_workers") = 1,
         py::arg("order") = "fifo", py::arg("prefetch") = false, py::arg("wait_for_room") = py::float_(60.0))
    .def("prometheus_text", &py_runtime::prometheus)
    .def("add_synthetic", &py_runtime::add_synthetic, py::arg("id"), py::arg("numels"), py::arg("seed") = py::int_(0))
    .def("add_file", &py_runtime::add_file, py::arg("id"), py::arg("files"), py::arg("order"), py::arg("required"),
         py::arg("device"), py::arg("replace") = false)
    .def("remove", &py_runtime::remove, py::arg("id"))
    .def("replace_synthetic", &py_runtime::replace_synthetic, py::arg("id"), py::arg("numels"), py::arg("seed") = py::int_(0))
    .def("add_folder", [](py_runtime& r, const std::string& folder) {
      auto found = [&] {
        without_gil unlocked;  // reading headers: other threads go on meanwhile
        return scan_folder(folder);
      }();
      return r.register_found(std::move(found));
    })
    .def("add_manifest", [](py_runtime& r, const std::string& path) {
      auto found = [&] {
        without_gil unlocked;
        return read_manifest(path);
      }();
      return r.register_found(std::move(found));
    })
    .def("model_ids", &py_runtime::ids)
    .def("describe", &py_runtime::describe);

#if MCACHE_PYTHON_FLEET
  bind_fleet(m);
#endif
  m.def("_cpp_cycle_seconds", &cpp_cycle_seconds, py::arg("runtime"), py::arg("model"), py::arg("device"), py::arg("n"));
}
