#pragma once
// What every part of the Python binding uses (Note [The Python binding], module.cpp): the boxes that tie
// a Python object's lifetime to the C++ objects it came from, letting the GIL go, and the checks that turn
// Python arguments into the runtime's values with typed errors.

#include "messages/errc.hpp"
#include "runtime/runtime.hpp"
#include "runtime/session.hpp"

// Every file of the binding casts through the same pybind11 casters (at::Tensor, c10::Device, the STL):
// one include here keeps them alike everywhere. LibTorch's pybind header, not torch/extension.h: the
// binding needs the casters, not the C++ frontend, which doubled its compile time and memory.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace mcache::python {

[[noreturn]] void fail(errc code, const std::string& text);

/// The Python classes of the errors, by code name, set by the package at import.
py::dict& error_classes();
/// `_set_error_classes`, `error_codes`, and the translator that raises a request_error as its class.
void bind_errors(py::module_& m);

// Numbers from Python are taken as objects and checked here, so that a wrong one is InvalidArgument naming
// the argument, as everywhere else, and not pybind11's bare TypeError (2**64 bytes, a bool, a string).

/// A wait in seconds (None: the runtime's default): a real number from 0 to 86400, not a bool.
std::optional<std::chrono::nanoseconds> wait_of(const py::handle& seconds, const char* what = "wait");
/// An integer (an int, or anything with __index__ such as numpy's; not a bool) from `lo` to `hi`.
int64_t integer_of(const py::handle& value, const char* what, int64_t lo, int64_t hi);
/// A count of bytes (or a seed): an integer from 0 to 2^63 - 1.
bytes_t bytes_of(const py::handle& value, const char* what);

bool interpreter_finalizing();

/// Lets the GIL go, if this thread holds it and the interpreter is not finalizing.
class without_gil {
public:
  without_gil() {
    if (!interpreter_finalizing() && PyGILState_Check())  // not held: a scope further out let it go already
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
  std::timed_mutex mutex;  // one thread at a time (Note [The Python binding]); timed: Note [Ctrl-C while waiting]
  std::optional<session> s;
  ~session_box() {
    without_gil unlocked;
    std::lock_guard<std::timed_mutex> guard{mutex};
    s.reset();
  }
};

/// A device argument: an index, "cpu", or "any" / None (the placement policy). A bool is refused although
/// Python counts it as an int: `device=True` is a mistake, not device 1.
struct py_device {
  enum { index, cpu, any } where = any;
  device_index number = 0;
};
py_device device_of(const py::object& device);
/// "cpu" for the CPU pins' tier, else the index.
py::object device_name(device_index device);

/// A state dict: the tensors by name, the cache's own memory (no copy). Built with the GIL held.
py::dict state_dict_of(const std::vector<named_tensor>& tensors);

} // namespace mcache::python
