// Note [The Python binding]: `mcache._core`, wrapped by the `mcache` package (python/mcache/__init__.py).
//
// Ownership. Python objects hold C++ objects through shared boxes: a lease or pin holds its session's box,
// a session holds its runtime's box. So whatever order Python frees them in, a handle is released before
// its session ends and a session ends before its runtime, as the C++ API requires. `Runtime.close()`
// shuts the runtime down at once (every later acquire or pin fails with ShuttingDown, later releases do
// nothing); the C++ runtime itself is destroyed when the last object made from it goes.
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
// exception is a streamed tensor: it lives in one of the pin's staging slots, which the next steps of the
// stream refill, so it is valid until the stream has moved two tensors on (clone it to keep it).

#include "messages/errc.hpp"
#include "runtime/config.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/model_files.hpp"
#include "runtime/metrics.hpp"
#include "runtime/runtime.hpp"
#include "runtime/session.hpp"

#include <torch/extension.h>

#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace mcache;

namespace {

[[noreturn]] void fail(errc code, const std::string& text) { throw request_error(failure{code, text}); }

/// The Python classes of the errors, by code name, set by the package at import.
py::dict& error_classes() {
  static py::dict* classes = new py::dict();  // leaked: it must outlive interpreter teardown order
  return *classes;
}

std::optional<std::chrono::nanoseconds> wait_of(std::optional<double> seconds) {
  if (!seconds)
    return std::nullopt;
  if (*seconds < 0)
    fail(errc::invalid_argument, "wait must be at least 0 seconds, not " + std::to_string(*seconds));
  return std::chrono::nanoseconds(static_cast<int64_t>(*seconds * 1e9));
}

/// Lets the GIL go, if this thread holds it and the interpreter is not finalizing.
class without_gil {
public:
  without_gil() {
    if (!_Py_IsFinalizing() && PyGILState_Check())  // not held: a scope further out let it go already
      release_.emplace();
  }

private:
  std::optional<py::gil_scoped_release> release_;
};

struct runtime_box {
  std::unique_ptr<runtime> rt;
  ~runtime_box() {
    without_gil unlocked;
    rt.reset();
  }
};

struct session_box {
  std::shared_ptr<runtime_box> owner;
  std::mutex mutex;  // one thread at a time (Note [The Python binding])
  std::optional<session> s;
  ~session_box() {
    without_gil unlocked;
    std::lock_guard<std::mutex> guard{mutex};
    s.reset();
  }
};

class py_runtime;

class py_lease {
public:
  py_lease(std::shared_ptr<session_box> box, lease l) : box_(std::move(box)), lease_(std::move(l)) {
    model_ = lease_->model();
    bytes_ = lease_->bytes();
  }
  ~py_lease() { release(); }
  py_lease(const py_lease&) = delete;
  py_lease& operator=(const py_lease&) = delete;

  /// Ends the lease; a second call does nothing.
  void release() {
    without_gil unlocked;
    std::lock_guard<std::mutex> guard{box_->mutex};
    if (lease_) {
      auto l = std::move(*lease_);
      lease_.reset();
      l.release();
    }
  }
  bool held() const { return lease_.has_value(); }
  const lease& get() const {
    if (!lease_)
      fail(errc::invalid_lease, "the lease on '" + model_ + "' was already released");
    return *lease_;
  }
  const std::shared_ptr<session_box>& box() const { return box_; }
  const std::string& model() const { return model_; }
  bytes_t bytes() const { return bytes_; }

private:
  std::shared_ptr<session_box> box_;
  std::optional<lease> lease_;
  std::string model_;
  bytes_t bytes_ = 0;
};

class py_stream;

class py_pin {
public:
  py_pin(std::shared_ptr<session_box> box, pin_handle p) : box_(std::move(box)), pin_(std::move(p)) {
    model_ = pin_->model();
    device_ = pin_->device();
  }
  ~py_pin() { release(); }
  py_pin(const py_pin&) = delete;
  py_pin& operator=(const py_pin&) = delete;

  void release() {
    without_gil unlocked;
    std::lock_guard<std::mutex> guard{box_->mutex};
    if (pin_) {
      auto p = std::move(*pin_);
      pin_.reset();
      p.release();
    }
  }
  bool held() const { return pin_.has_value(); }
  const pin_handle& get() const {
    if (!pin_)
      fail(errc::invalid_pin, "the pin of '" + model_ + "' was already released");
    return *pin_;
  }
  const std::string& model() const { return model_; }
  device_index device() const { return device_; }

private:
  std::shared_ptr<session_box> box_;
  std::optional<pin_handle> pin_;
  std::string model_;
  device_index device_ = 0;
};

/// `for name, tensor in pin.stream():` — resident tensors from the device copy, the rest through staging.
class py_stream {
public:
  explicit py_stream(std::shared_ptr<py_pin> pin) : pin_(std::move(pin)), stream_(new tensor_stream(pin_->get().stream())) {}
  py::tuple next() {
    if (!pin_->held())
      fail(errc::invalid_pin, "the pin of '" + pin_->model() + "' was released while its stream was in use");
    if (next_ >= stream_->size())
      throw py::stop_iteration();
    auto i = next_++;
    at::Tensor t;
    {
      without_gil unlocked;  // waits for the slot's copy
      t = stream_->get(i);
    }
    return py::make_tuple(stream_->name(i), t);
  }
  size_t size() const { return stream_->size(); }

private:
  std::shared_ptr<py_pin> pin_;
  std::unique_ptr<tensor_stream> stream_;
  size_t next_ = 0;
};

class py_session {
public:
  explicit py_session(std::shared_ptr<session_box> box) : box_(std::move(box)) {}

  std::shared_ptr<py_lease> acquire(const std::string& model, std::optional<double> wait) {
    auto w = wait_of(wait);
    std::optional<lease> l;
    {
      without_gil unlocked;
      std::lock_guard<std::mutex> guard{box_->mutex};
      l.emplace(box_->s->acquire(model, w));
    }
    return std::make_shared<py_lease>(box_, std::move(*l));
  }

  std::vector<std::shared_ptr<py_lease>> acquire_all(const std::vector<std::string>& models, std::optional<double> wait) {
    auto w = wait_of(wait);
    std::vector<lease> ls;
    {
      without_gil unlocked;
      std::lock_guard<std::mutex> guard{box_->mutex};
      ls = box_->s->acquire_all(models, w);
    }
    std::vector<std::shared_ptr<py_lease>> out;
    for (auto& l : ls)
      out.push_back(std::make_shared<py_lease>(box_, std::move(l)));
    return out;
  }

  std::shared_ptr<py_pin> pin(const py_lease& l, const py::object& device, bytes_t working, std::optional<double> wait) {
    if (l.box() != box_)
      fail(errc::foreign_lease, "the lease on '" + l.model() + "' belongs to another session");
    auto w = wait_of(wait);
    enum { on_device, on_cpu, anywhere } where = on_device;
    device_index index = 0;
    if (device.is_none() || (py::isinstance<py::str>(device) && device.cast<std::string>() == "any"))
      where = anywhere;
    else if (py::isinstance<py::str>(device) && device.cast<std::string>() == "cpu")
      where = on_cpu;
    else if (py::isinstance<py::int_>(device))
      index = device.cast<device_index>();
    else
      fail(errc::invalid_device, "device must be a device index, \"cpu\" or \"any\", not " + py::repr(device).cast<std::string>());
    std::optional<pin_handle> p;
    {
      without_gil unlocked;
      std::lock_guard<std::mutex> guard{box_->mutex};
      const auto& held = l.get();
      if (where == anywhere)
        p.emplace(box_->s->pin_anywhere(held, working, w));
      else
        p.emplace(box_->s->pin(held, where == on_cpu ? cpu_device : index, working, w));
    }
    return std::make_shared<py_pin>(box_, std::move(*p));
  }

  bytes_t offload(device_index device, const std::string& model, bytes_t bytes) {
    without_gil unlocked;
    std::lock_guard<std::mutex> guard{box_->mutex};
    return box_->s->offload(device, model, bytes);
  }

  bytes_t trim_ram(const std::string& model, bytes_t bytes) {
    without_gil unlocked;
    std::lock_guard<std::mutex> guard{box_->mutex};
    return box_->s->trim_ram(model, bytes);
  }

private:
  std::shared_ptr<session_box> box_;
};

class py_runtime {
public:
  explicit py_runtime(const std::string& config_json) {
    auto options = options_from_json(config_json);
    box_ = std::make_shared<runtime_box>();
    without_gil unlocked;
    box_->rt = std::make_unique<runtime>(options);
  }

  runtime& rt() const {
    if (!box_ || !box_->rt)
      fail(errc::shutting_down, "the runtime is closed");
    return *box_->rt;
  }

  py_session session(const std::string& name) {
    auto& r = rt();
    if (r.stopped())
      fail(errc::shutting_down, "the runtime is closed");
    auto box = std::make_shared<session_box>();
    box->owner = box_;
    {
      without_gil unlocked;
      box->s.emplace(r.open_session(name));
    }
    return py_session{box};
  }

  /// Shuts the runtime down now; it is destroyed when the last object made from it goes.
  void close() {
    if (!box_)
      return;
    {
      without_gil unlocked;
      if (box_->rt)
        box_->rt->shutdown();
    }
    box_.reset();
  }
  bool closed() const { return !box_; }

  std::string status_json() {
    auto& r = rt();
    without_gil unlocked;
    return r.status_json();
  }
  std::string prometheus() {
    auto& r = rt();
    without_gil unlocked;
    return prometheus_text(r.stats());
  }

  // -- the catalog ------------------------------------------------------------------------------------
  std::string add_synthetic(const std::string& id, const std::vector<int64_t>& numels, uint64_t seed) {
    if (auto err = rt().models().add(synthetic_model(id, numels, seed)))
      throw request_error(*err);
    return id;
  }
  std::string add_file(const std::string& id, const std::vector<std::string>& files,
                       const std::vector<std::string>& order, const std::vector<std::string>& required,
                       std::optional<device_index> device) {
    file_model_spec spec{id, files, order, required, device};
    auto d = describe_files(spec);
    if (!succeeded(d))
      throw request_error(std::get<failure>(d));
    if (auto err = register_all(rt().models(), {std::get<model_descriptor>(d)}))
      throw request_error(*err);
    return id;
  }
  std::vector<std::string> register_found(outcome<std::vector<model_descriptor>> found) {
    if (!succeeded(found))
      throw request_error(std::get<failure>(found));
    auto& models = std::get<std::vector<model_descriptor>>(found);
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
  auto& rt = r.rt();
  without_gil unlocked;
  auto s = rt.open_session("cpp-bench");
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

PYBIND11_MODULE(_core, m) {
  py::module_::import("torch");
  m.doc() = "mcache's C++ core; use the `mcache` package.";

  m.def("_set_error_classes", [](py::dict classes) { error_classes() = classes; });
  py::list codes;
  for (int c = 1; c <= static_cast<int>(errc::work_failed); ++c)
    codes.append(to_string(static_cast<errc>(c)));
  m.attr("error_codes") = codes;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const request_error& e) {
      auto code = to_string(e.code());
      auto& classes = error_classes();
      py::object cls = classes.contains(code) ? classes[code] : py::object(py::reinterpret_borrow<py::object>(PyExc_RuntimeError));
      auto args = py::make_tuple(std::string(e.what()), std::string(code));
      PyErr_SetObject(cls.ptr(), args.ptr());
    }
  });

  py::class_<py_lease, std::shared_ptr<py_lease>>(m, "Lease")
    .def_property_readonly("model", &py_lease::model)
    .def_property_readonly("bytes", &py_lease::bytes)
    .def_property_readonly("held", &py_lease::held)
    .def("release", &py_lease::release, "Ends the lease; a second call does nothing.")
    .def("tensor", [](const py_lease& l, const std::string& name) {
      for (const auto& t : l.get().host().tensors)
        if (t.name == name)
          return t.tensor;
      fail(errc::invalid_argument, "model '" + l.model() + "' has no tensor '" + name + "'");
    }, "The RAM copy of a tensor: the cache's own memory, no copy.")
    .def("state_dict", [](const py_lease& l) {
      py::dict out;
      for (const auto& t : l.get().host().tensors)
        out[py::str(t.name)] = t.tensor;
      return out;
    })
    .def("__enter__", [](std::shared_ptr<py_lease> l) { return l; })
    .def("__exit__", [](py_lease& l, py::args) { l.release(); return false; })
    .def("__repr__", [](const py_lease& l) {
      return "<mcache.Lease '" + l.model() + "' " + std::to_string(l.bytes()) + " B" + (l.held() ? "" : " released") + ">";
    });

  py::class_<py_pin, std::shared_ptr<py_pin>>(m, "Pin")
    .def_property_readonly("model", &py_pin::model)
    .def_property_readonly("device", [](const py_pin& p) -> py::object {
      if (p.device() == cpu_device)
        return py::str("cpu");
      return py::int_(p.device());
    })
    .def_property_readonly("held", &py_pin::held)
    .def_property_readonly("partial", [](const py_pin& p) { return p.get().partial(); })
    .def_property_readonly("resident_bytes", [](const py_pin& p) { return p.get().resident_bytes(); })
    .def_property_readonly("working_bytes", [](const py_pin& p) { return p.get().working_bytes(); })
    .def("release", &py_pin::release, "Ends the pin; a second call does nothing.")
    .def("tensor", [](const py_pin& p, const std::string& name) -> py::object {
      auto t = p.get().tensor(name);
      if (!t.defined())
        return py::none();  // no such tensor, or it is not resident (stream it)
      return py::cast(t);
    }, "The device copy of a tensor (None if it is not resident: use stream()). No copy.")
    .def("state_dict", [](const py_pin& p) {
      py::dict out;
      const auto& pin = p.get();
      if (pin.partial())
        fail(errc::invalid_argument, "the pin of '" + p.model() + "' is partial: its streamed tensors have no "
                                     "lasting device copy; use stream(), or pin with more room");
      for (const auto& t : pin.tensors().tensors)
        out[py::str(t.name)] = t.tensor;
      return out;
    }, "Every tensor's device copy, by name (a full pin only). No copy.")
    .def("stream", [](std::shared_ptr<py_pin> p) { return std::make_shared<py_stream>(p); })
    .def("__enter__", [](std::shared_ptr<py_pin> p) { return p; })
    .def("__exit__", [](py_pin& p, py::args) { p.release(); return false; })
    .def("__repr__", [](const py_pin& p) {
      return "<mcache.Pin '" + p.model() + "' on " + (p.device() == cpu_device ? std::string{"cpu"} : std::to_string(p.device()))
             + (p.held() ? "" : " released") + ">";
    });

  py::class_<py_stream, std::shared_ptr<py_stream>>(m, "Stream")
    .def("__iter__", [](std::shared_ptr<py_stream> s) { return s; })
    .def("__next__", &py_stream::next)
    .def("__len__", &py_stream::size);

  py::class_<py_session>(m, "Session")
    .def("acquire", &py_session::acquire, py::arg("model"), py::arg("wait") = py::none())
    .def("acquire_all", &py_session::acquire_all, py::arg("models"), py::arg("wait") = py::none())
    .def("pin", &py_session::pin, py::arg("lease"), py::arg("device") = py::none(), py::arg("working") = 0,
         py::arg("wait") = py::none())
    .def("offload", &py_session::offload, py::arg("device"), py::arg("model") = "", py::arg("bytes") = 0)
    .def("trim_ram", &py_session::trim_ram, py::arg("model") = "", py::arg("bytes") = 0);

  py::class_<py_runtime>(m, "Runtime")
    .def(py::init<const std::string&>(), py::arg("config_json"))
    .def("session", &py_runtime::session, py::arg("name") = "")
    .def("close", &py_runtime::close)
    .def_property_readonly("closed", &py_runtime::closed)
    .def_property_readonly("device_count", [](py_runtime& r) { return r.rt().device_count(); })
    .def("status_json", &py_runtime::status_json)
    .def("prometheus_text", &py_runtime::prometheus)
    .def("add_synthetic", &py_runtime::add_synthetic, py::arg("id"), py::arg("numels"), py::arg("seed") = 0)
    .def("add_file", &py_runtime::add_file, py::arg("id"), py::arg("files"), py::arg("order"), py::arg("required"),
         py::arg("device"))
    .def("add_folder", [](py_runtime& r, const std::string& folder) { return r.register_found(scan_folder(folder)); })
    .def("add_manifest", [](py_runtime& r, const std::string& path) { return r.register_found(read_manifest(path)); })
    .def("model_ids", &py_runtime::ids)
    .def("describe", &py_runtime::describe);

  m.def("_cpp_cycle_seconds", &cpp_cycle_seconds, py::arg("runtime"), py::arg("model"), py::arg("device"), py::arg("n"));
}
