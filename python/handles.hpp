#pragma once
// Leases, pins and their streams as Python holds them, and the session that grants them (Note [The
// Python binding], module.cpp).

#include "python/signals.hpp"

#include <atomic>
#include <functional>
#include <type_traits>

namespace mcache::python {

/// A lease or a pin held from Python. Every access to the C++ handle happens under its session's mutex
/// with the GIL let go (Note [The Python binding]): another thread may release it at any time.
template <class Handle>
class py_handle {
public:
  py_handle(std::shared_ptr<session_box> box, Handle h, std::string what)
    : box_(std::move(box)), handle_(std::move(h)), model_(handle_->model()), what_(std::move(what)) {}
  ~py_handle() {
    try {
      if (held_) {  // a finalizer takes the mutex plainly: it cannot raise KeyboardInterrupt
        without_gil unlocked;
        std::lock_guard<std::timed_mutex> guard{box_->mutex};
        end_locked();
      }
    } catch (...) {  // a finalizer cannot report; the runtime logs what it refused
    }
  }
  py_handle(const py_handle&) = delete;
  py_handle& operator=(const py_handle&) = delete;

  /// Ends the lease or pin; a second call does nothing (and does not wait for the session).
  void release() {
    if (held_)
      with_session(*box_, [&] { end_locked(); });
  }
  bool held() const { return held_; }
  /// Runs `f(handle)` under the session's mutex, the GIL let go; fails if the handle was released.
  template <class F>
  auto locked(F f) const {
    std::optional<decltype(f(std::declval<const Handle&>()))> out;
    with_session(*box_, [&] { out.emplace(f(get_locked())); });
    return std::move(*out);
  }
  /// The handle, for a caller that holds the session's mutex already.
  const Handle& get_locked() const {
    if (!handle_)
      fail(std::is_same<Handle, lease>::value ? errc::invalid_lease : errc::invalid_pin,
           "the " + what_ + " '" + model_ + "' was already released");
    return *handle_;
  }
  const std::shared_ptr<session_box>& box() const { return box_; }
  const std::string& model() const { return model_; }

private:
  void end_locked() {
    if (handle_) {
      auto h = std::move(*handle_);
      handle_.reset();
      held_ = false;
      h.release();
    }
  }

  std::shared_ptr<session_box> box_;
  std::optional<Handle> handle_;
  std::atomic<bool> held_{true};
  std::string model_;
  std::string what_;
};

class py_lease : public py_handle<lease> {
public:
  py_lease(std::shared_ptr<session_box> box, lease l)
    : py_handle(std::move(box), std::move(l), "lease on"), bytes_(get_locked().bytes()) {}  // not shared yet
  bytes_t bytes() const { return bytes_; }

private:
  bytes_t bytes_;
};

class py_pin : public py_handle<pin_handle> {
public:
  py_pin(std::shared_ptr<session_box> box, pin_handle p)
    : py_handle(std::move(box), std::move(p), "pin of"), device_(get_locked().device()) {}  // not shared yet
  device_index device() const { return device_; }

private:
  device_index device_;
};

/// `for name, tensor in pin.stream():` (or `ctx.stream(model)` in a stage) — resident tensors from the
/// device copy, the rest through the pin's staging ring. Once exhausted it gives the ring back, so the pin
/// can be streamed again while this object is still referenced (`st = pin.stream(); list(st); pin.stream()`).
class py_stream {
public:
  /// `check_source` raises if what the stream reads has ended (its pin released, its stage over); it runs
  /// with the GIL held before each step. The tensor_stream itself holds the copies and slots it reads, so
  /// a step racing the end of its pin on another thread reads memory that is still there.
  py_stream(std::unique_ptr<tensor_stream> stream, std::function<void()> check_source)
    : check_source_(std::move(check_source)), stream_(std::move(stream)), size_(stream_->size()) {}
  py::tuple next();
  size_t size() const { return size_; }

private:
  std::function<void()> check_source_;
  std::unique_ptr<tensor_stream> stream_;  // null once exhausted
  size_t size_;
  std::mutex mutex_;
  size_t next_ = 0;
};

class py_session {
public:
  explicit py_session(std::shared_ptr<session_box> box) : box_(std::move(box)) {}

  std::shared_ptr<py_lease> acquire(const std::string& model, const py::object& wait);
  std::vector<std::shared_ptr<py_lease>> acquire_all(const std::vector<std::string>& models, const py::object& wait);
  std::shared_ptr<py_pin> pin(const std::shared_ptr<py_lease>& lease, const py::object& device, const py::object& working,
                              const py::object& wait);
  bytes_t offload(const py::object& device, const std::string& model, const py::object& bytes);
  bytes_t trim_ram(const std::string& model, const py::object& bytes);

private:
  std::shared_ptr<session_box> box_;
};

/// Every tensor of a full pin (a partial one's streamed tensors have no lasting device copy).
std::vector<named_tensor> full_pin_tensors(const pin_handle& pin);

/// Lease, Pin, Stream and Session.
void bind_handles(py::module_& m);

} // namespace mcache::python
