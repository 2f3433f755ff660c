#include "python/signals.hpp"

namespace mcache::python {

namespace {
thread_local bool withdrawn_for_sigint = false;
thread_local bool sigint_withdraws = false;  // this call's: SIGINT's handler was Python's default

bool sigint_handler_is_default() {
  static auto* signal_module = new py::object(py::module_::import("_signal"));  // leaked: outlives teardown
  auto handler = signal_module->attr("getsignal")(signal_module->attr("SIGINT"));
  return handler.is(signal_module->attr("default_int_handler"));
}
} // namespace

unsigned long& main_thread_ident() {
  static unsigned long ident = 0;
  return ident;
}

bool python_signal_pending() {
  if (!sigint_withdraws || !on_main_thread() || interpreter_finalizing())
    return false;
  py::gil_scoped_acquire gil;
  if (!PyOS_InterruptOccurred())  // clears SIGINT's flag when set...
    return false;
  PyErr_SetInterrupt();  // ...so it is set again: its handler runs once the call has returned
  withdrawn_for_sigint = true;
  return true;
}

void begin_call_sigint_may_withdraw() {
  withdrawn_for_sigint = false;
  sigint_withdraws = on_main_thread() && sigint_handler_is_default();
}

bool end_call_sigint_may_withdraw() {
  sigint_withdraws = false;
  return std::exchange(withdrawn_for_sigint, false);
}

} // namespace mcache::python
