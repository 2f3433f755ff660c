#pragma once
// Note [Ctrl-C while waiting]: Python turns Ctrl-C into KeyboardInterrupt on the main thread only, once
// that thread runs Python code again, and a call that waits for room holds it in C++ for the whole wait
// (up to a day). So every session gets a wait check (session::set_wait_check): every 100 ms of a wait,
// on the main thread only, it takes the GIL and, where SIGINT's handler is Python's default (the one that
// raises KeyboardInterrupt), asks whether SIGINT arrived (PyOS_InterruptOccurred). If so it trips SIGINT
// again, for later, and the session withdraws its request: the call ends with `cancelled` if it still
// waited (for room, a load or a copy: Note [Admission] rule 6), or with the grant if that came first. Then, the session's mutex let go, the handler
// runs (PyErr_CheckSignals), what the call got is given back, and KeyboardInterrupt is raised. A handler
// of the program's own (asyncio's, a server's "stop after this step") is left alone: the wait goes on,
// and the handler runs when the call returns, as it would for any C call. Handlers never run under the
// session's mutex, so one that uses the session cannot deadlock on it. On the main thread, waiting for
// the session's mutex itself (another thread's call holds it) also looks for signals every 100 ms. A
// load the call leaves goes on for others waiting for it, or stops (Note [An abandoned load stops]).
// Other threads never take the GIL here.

#include "python/binding.hpp"

#include <exception>
#include <utility>

namespace mcache::python {

/// The ident of the interpreter's main thread, set at import: the one thread Python raises
/// KeyboardInterrupt in.
unsigned long& main_thread_ident();
inline bool on_main_thread() { return PyThread_get_thread_ident() == main_thread_ident(); }

/// The longest a wait from Python goes without running Python's signal handlers.
constexpr std::chrono::milliseconds signal_slice{100};

/// The sessions' wait check. It runs under the session's mutex: it takes the GIL, but runs no Python
/// code and makes no Python object (no handler, no garbage collection, no finalizer can run in it).
bool python_signal_pending();

/// Brackets a call whose wait SIGINT may withdraw: the first, with the GIL held and the session's mutex
/// not, asks whether SIGINT's handler is Python's default (that runs Python code, so never under the
/// mutex: a handler or a finalizer could use the session); the second says whether the call was withdrawn.
void begin_call_sigint_may_withdraw();
bool end_call_sigint_may_withdraw();

/// Waits in slices: calls `attempt()` with the GIL let go until it returns true (each call waits at most
/// `signal_slice`), and between calls, the GIL taken, runs Python's signal handlers and raises what they
/// raise, so that Ctrl-C interrupts the wait.
template <class Attempt>
void wait_taking_signals(Attempt attempt) {
  for (;;) {
    {
      without_gil unlocked;
      if (attempt())
        return;
    }
    if (PyErr_CheckSignals() != 0)
      throw py::error_already_set();
  }
}

/// Runs `f` under the session's mutex with the GIL let go (the mutex let go before the GIL is taken
/// back). On the main thread, waiting for the mutex takes signals (nothing is held then).
template <class F>
void with_session(session_box& box, F f) {
  if (!on_main_thread() || !PyGILState_Check()) {
    without_gil unlocked;
    std::lock_guard<std::timed_mutex> guard{box.mutex};
    f();
    return;
  }
  wait_taking_signals([&] {
    std::unique_lock<std::timed_mutex> lock{box.mutex, std::defer_lock};
    if (!lock.try_lock_for(signal_slice))
      return false;
    f();
    return true;
  });
}

/// Runs a session call (a lease, leases or a pin) under the session's mutex; then, if its wait check
/// withdrew it for SIGINT, runs the signal's handler (Note [Ctrl-C while waiting]).
template <class Call>
auto call_that_may_wait(session_box& box, Call call) -> decltype(call(*box.s)) {
  std::optional<decltype(call(*box.s))> got;
  std::exception_ptr refused;
  begin_call_sigint_may_withdraw();
  try {
    with_session(box, [&] { got.emplace(call(*box.s)); });
  } catch (const request_error&) {
    refused = std::current_exception();
  }
  if (end_call_sigint_may_withdraw() && PyErr_CheckSignals() != 0) {
    if (got) {  // granted before the withdraw arrived: given back
      without_gil unlocked;
      std::lock_guard<std::timed_mutex> guard{box.mutex};
      got.reset();
    }
    throw py::error_already_set();
  }
  if (refused)
    std::rethrow_exception(refused);
  return std::move(*got);
}

} // namespace mcache::python
