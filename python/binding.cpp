#include "python/binding.hpp"

#include <cmath>
#include <exception>
#include <limits>

namespace mcache::python {

void fail(errc code, const std::string& text) { throw request_error(failure{code, text}); }

py::dict& error_classes() {
  static py::dict* classes = new py::dict();  // leaked: it must outlive interpreter teardown order
  return *classes;
}

void bind_errors(py::module_& m) {
  m.def("_set_error_classes", [](py::dict classes) { error_classes() = classes; });
  py::list codes;
  for (int c = 1; c <= static_cast<int>(last_errc); ++c)
    codes.append(to_string(static_cast<errc>(c)));
  m.attr("error_codes") = codes;
  py::register_exception_translator([](std::exception_ptr p) {
    auto raise = [](errc c, const std::string& text) {
      auto code = to_string(c);
      auto& classes = error_classes();
      py::object cls = classes.contains(code) ? classes[code] : py::object(py::reinterpret_borrow<py::object>(PyExc_RuntimeError));
      // A text may quote bytes that are not UTF-8 (a file's name, a parser's view of a file): they become
      // \xNN rather than a UnicodeDecodeError in place of the error.
      auto message = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "backslashreplace"));
      if (!message)
        throw py::error_already_set();
      auto args = py::make_tuple(message, std::string(code));
      PyErr_SetObject(cls.ptr(), args.ptr());
    };
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const request_error& e) {
      raise(e.code(), e.what());
    } catch (const py::cast_error& e) {
      // A value of the right Python type that its C++ type cannot hold (a device index of 2**40, a
      // negative byte count): the caller's input, so a typed error, not pybind11's bare RuntimeError.
      raise(errc::invalid_argument, std::string{"a value is out of range or of the wrong type: "} + e.what());
    }
  });
}

namespace {
std::string repr_of(const py::handle& value) { return py::repr(value).cast<std::string>(); }

/// Python's bool or numpy's: a mistake where a number is asked for (`wait=True` is not one second).
bool is_a_bool(const py::handle& value) {
  if (py::isinstance<py::bool_>(value))
    return true;
  std::string type = Py_TYPE(value.ptr())->tp_name;
  return type == "numpy.bool_" || type == "numpy.bool";
}

/// After a conversion failed: a TypeError or ValueError (not a number) is the caller's mistake; anything
/// else (a KeyboardInterrupt raised inside __float__) goes on as it is.
[[noreturn]] void not_a_number(const char* what, const char* kind, const py::handle& value) {
  if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError))
    throw py::error_already_set();
  PyErr_Clear();
  fail(errc::invalid_argument, std::string{what} + " is " + kind + ", not " + repr_of(value));
}
} // namespace

std::optional<std::chrono::nanoseconds> wait_of(const py::handle& seconds, const char* what) {
  if (seconds.is_none())
    return std::nullopt;
  if (is_a_bool(seconds) || !PyNumber_Check(seconds.ptr()))  // (ints, floats, numpy's scalars)
    fail(errc::invalid_argument, std::string{what} + " is a number of seconds, not " + repr_of(seconds));
  double s = PyFloat_AsDouble(seconds.ptr());
  if (s == -1.0 && PyErr_Occurred())
    not_a_number(what, "a number of seconds", seconds);
  if (!(s >= 0) || s > 86400.0)  // also NaN
    fail(errc::invalid_argument, std::string{what} + " must be from 0 to 86400 seconds, not " + repr_of(seconds));
  return std::chrono::nanoseconds(static_cast<int64_t>(s * 1e9));
}

int64_t integer_of(const py::handle& value, const char* what, int64_t lo, int64_t hi) {
  if (is_a_bool(value))
    fail(errc::invalid_argument, std::string{what} + " is an integer, not " + repr_of(value));
  py::object index;
  if (PyFloat_Check(value.ptr())) {  // a whole float (2.0 * 2**30, 1e6) is that integer; 1.5 or NaN is not
    double d = PyFloat_AsDouble(value.ptr());
    if (!(d == std::floor(d)) || std::isinf(d))
      fail(errc::invalid_argument, std::string{what} + " is a whole number, not " + repr_of(value));
    index = py::reinterpret_steal<py::object>(PyLong_FromDouble(d));
  } else if (PyIndex_Check(value.ptr())) {
    index = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  } else {
    fail(errc::invalid_argument, std::string{what} + " is an integer, not " + repr_of(value));
  }
  if (!index)
    not_a_number(what, "an integer", value);
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (v == -1 && PyErr_Occurred())
    throw py::error_already_set();
  if (overflow == 0 && v < 0 && lo == 0)
    fail(errc::invalid_argument, std::string{what} + " must not be negative, not " + repr_of(value));
  if (overflow != 0 || v < lo || v > hi)
    fail(errc::invalid_argument, std::string{what} + " must be from " + std::to_string(lo) + " to "
                                   + std::to_string(hi) + ", not " + repr_of(value));
  return v;
}

bytes_t bytes_of(const py::handle& value, const char* what) {
  return static_cast<bytes_t>(integer_of(value, what, 0, std::numeric_limits<int64_t>::max()));
}

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

py_device device_of(const py::object& device) {
  py_device d;
  if (device.is_none() || (py::isinstance<py::str>(device) && device.cast<std::string>() == "any"))
    d.where = py_device::any;
  else if (py::isinstance<py::str>(device) && device.cast<std::string>() == "cpu")
    d.where = py_device::cpu;
  else if (PyIndex_Check(device.ptr()) && !py::isinstance<py::bool_>(device)) {  // int, numpy's ints
    d.where = py_device::index;
    d.number = py::int_(device).cast<device_index>();
  } else
    fail(errc::invalid_device, "a device is an index, \"cpu\" or \"any\", not " + py::repr(device).cast<std::string>());
  return d;
}

py::object device_name(device_index device) {
  if (device == cpu_device)
    return py::str("cpu");
  return py::int_(device);
}

py::dict state_dict_of(const std::vector<named_tensor>& tensors) {
  py::dict out;
  for (const auto& t : tensors)
    out[py::str(t.name)] = t.tensor;
  return out;
}

} // namespace mcache::python
