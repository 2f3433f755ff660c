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

#include "messages/errc.hpp"
#include "runtime/config.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/model_files.hpp"
#include "runtime/metrics.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"
#include "runtime/session.hpp"

#include <torch/extension.h>

#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
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
  if (!(*seconds >= 0) || *seconds > 86400.0)  // also NaN
    fail(errc::invalid_argument, "wait must be from 0 to 86400 seconds, not " + std::to_string(*seconds));
  return std::chrono::nanoseconds(static_cast<int64_t>(*seconds * 1e9));
}

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

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

/// A count Python gave as a signed integer (pybind11 refuses a negative one for an unsigned parameter with
/// a bare TypeError): negative is InvalidArgument, naming the argument.
bytes_t bytes_of(int64_t value, const char* what) {
  if (value < 0)
    fail(errc::invalid_argument, std::string{what} + " must not be negative, not " + std::to_string(value));
  return static_cast<bytes_t>(value);
}

/// The ident of the interpreter's main thread, set at import: the one thread Python raises
/// KeyboardInterrupt in.
unsigned long& main_thread_ident() {
  static unsigned long ident = 0;
  return ident;
}

// Note [Ctrl-C while waiting]: Python turns Ctrl-C into KeyboardInterrupt on the main thread only, once
// that thread runs Python code again, and a call that waits for room holds it in C++ for the whole wait
// (up to a day). So every session gets a wait check (session::set_wait_check): every 100 ms of a wait,
// on the main thread only, it takes the GIL and, where SIGINT's handler is Python's default (the one that
// raises KeyboardInterrupt), asks whether SIGINT arrived (PyOS_InterruptOccurred). If so it trips SIGINT
// again, for later, and the session withdraws its request: the call ends with `cancelled` if it still
// waited for room, or with the grant if that came first. Then, the session's mutex let go, the handler
// runs (PyErr_CheckSignals), what the call got is given back, and KeyboardInterrupt is raised. A handler
// of the program's own (asyncio's, a server's "stop after this step") is left alone: the wait goes on,
// and the handler runs when the call returns, as it would for any C call. Handlers never run under the
// session's mutex, so one that uses the session cannot deadlock on it. On the main thread, waiting for
// the session's mutex itself (another thread's call holds it) also looks for signals every 100 ms. A
// load or copy already under way is waited for. Other threads never take the GIL here.
thread_local bool withdrawn_for_sigint = false;
thread_local bool sigint_withdraws = false;  // this call's: SIGINT's handler was Python's default

/// Whether SIGINT's handler is Python's default, asked before a call with the GIL held and the session's
/// mutex not (the check below must run no Python: a handler or a finalizer could use the session).
bool sigint_handler_is_default() {
  static auto* signal_module = new py::object(py::module_::import("_signal"));  // leaked: outlives teardown
  auto handler = signal_module->attr("getsignal")(signal_module->attr("SIGINT"));
  return handler.is(signal_module->attr("default_int_handler"));
}

/// The sessions' wait check. It runs under the session's mutex: it takes the GIL, but runs no Python
/// code and makes no Python object (no handler, no garbage collection, no finalizer can run in it).
bool python_signal_pending() {
  if (!sigint_withdraws || PyThread_get_thread_ident() != main_thread_ident() || interpreter_finalizing())
    return false;
  py::gil_scoped_acquire gil;
  if (!PyOS_InterruptOccurred())  // clears SIGINT's flag when set...
    return false;
  PyErr_SetInterrupt();  // ...so it is set again: its handler runs once the call has returned
  withdrawn_for_sigint = true;
  return true;
}

/// The longest a wait from Python goes without running Python's signal handlers.
constexpr std::chrono::milliseconds signal_slice{100};

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
  if (PyThread_get_thread_ident() != main_thread_ident() || !PyGILState_Check()) {
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
  withdrawn_for_sigint = false;
  sigint_withdraws = PyThread_get_thread_ident() == main_thread_ident() && sigint_handler_is_default();
  try {
    with_session(box, [&] { got.emplace(call(*box.s)); });
  } catch (const request_error&) {
    refused = std::current_exception();
  }
  sigint_withdraws = false;
  if (std::exchange(withdrawn_for_sigint, false) && PyErr_CheckSignals() != 0) {
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
  py::tuple next() {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      if (!stream_ || next_ >= size_) {  // exhausted is exhausted, whatever became of its source
        stream_.reset();
        throw py::stop_iteration();
      }
    }
    check_source_();
    bool exhausted = false;
    std::string name;
    at::Tensor t;
    {
      without_gil unlocked;  // waits for the slot's copy, or for the ring's fills as it goes
      std::lock_guard<std::mutex> guard{mutex_};  // threads sharing one stream take turns
      if (!stream_ || next_ >= size_) {
        exhausted = true;
        stream_.reset();  // the last streamed tensor was valid until this step, as any is until the next
      } else {
        auto i = next_++;
        t = stream_->get(i);
        name = stream_->name(i);
      }
    }
    if (exhausted)
      throw py::stop_iteration();
    return py::make_tuple(name, t);
  }
  size_t size() const { return size_; }

private:
  std::function<void()> check_source_;
  std::unique_ptr<tensor_stream> stream_;  // null once exhausted
  size_t size_;
  std::mutex mutex_;
  size_t next_ = 0;
};

/// A device argument: an index, "cpu", or "any" / None (the placement policy). A bool is refused although
/// Python counts it as an int: `device=True` is a mistake, not device 1.
struct py_device {
  enum { index, cpu, any } where = any;
  device_index number = 0;
};

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

class py_session {
public:
  explicit py_session(std::shared_ptr<session_box> box) : box_(std::move(box)) {}

  std::shared_ptr<py_lease> acquire(const std::string& model, std::optional<double> wait) {
    auto w = wait_of(wait);
    auto l = call_that_may_wait(*box_, [&](session& s) { return s.acquire(model, w); });
    return std::make_shared<py_lease>(box_, std::move(l));
  }

  std::vector<std::shared_ptr<py_lease>> acquire_all(const std::vector<std::string>& models, std::optional<double> wait) {
    auto w = wait_of(wait);
    auto ls = call_that_may_wait(*box_, [&](session& s) { return s.acquire_all(models, w); });
    std::vector<std::shared_ptr<py_lease>> out;
    for (auto& l : ls)
      out.push_back(std::make_shared<py_lease>(box_, std::move(l)));
    return out;
  }

  std::shared_ptr<py_pin> pin(const std::shared_ptr<py_lease>& lease, const py::object& device, int64_t working_bytes,
                              std::optional<double> wait) {
    auto working = bytes_of(working_bytes, "working");
    if (!lease)
      fail(errc::invalid_lease, "pin needs a lease, not None");
    const auto& l = *lease;
    if (l.box() != box_)
      fail(errc::foreign_lease, "the lease on '" + l.model() + "' belongs to another session");
    auto w = wait_of(wait);
    auto where = device_of(device);
    auto p = call_that_may_wait(*box_, [&](session& s) {
      const auto& held = l.get_locked();  // under the session's mutex: the lease is this session's
      if (where.where == py_device::any)
        return s.pin_anywhere(held, working, w);
      return s.pin(held, where.where == py_device::cpu ? cpu_device : where.number, working, w);
    });
    return std::make_shared<py_pin>(box_, std::move(p));
  }

  bytes_t offload(const py::object& device, const std::string& model, int64_t bytes) {
    auto where = device_of(device);
    if (where.where != py_device::index || where.number < 0)
      fail(errc::invalid_device, "offload frees one GPU's memory: give its index, not " + py::repr(device).cast<std::string>());
    auto at_least = bytes_of(bytes, "bytes");
    bytes_t freed = 0;
    with_session(*box_, [&] { freed = box_->s->offload(where.number, model, at_least); });
    return freed;
  }

  bytes_t trim_ram(const std::string& model, int64_t bytes) {
    auto at_least = bytes_of(bytes, "bytes");
    bytes_t freed = 0;
    with_session(*box_, [&] { freed = box_->s->trim_ram(model, at_least); });
    return freed;
  }

private:
  std::shared_ptr<session_box> box_;
};

/// A job handle from Python; it keeps the runtime (and so the actor system its handle points into) alive.
struct py_job_box {
  job_handle job;
  std::shared_ptr<runtime_box> owner;
};

/// What a stage's Python work sees while the stage runs (Note [The Python binding]).
class py_stage {
public:
  explicit py_stage(stage_context* context) : context_(context) {}
  const stage_context& get() const {
    if (!context_)
      fail(errc::invalid_argument, "the stage has ended: its context is no longer valid");
    return *context_;
  }
  void end() { context_ = nullptr; }
  bool ended() const { return !context_; }

private:
  stage_context* context_;
};

/// Every tensor of a full pin (a partial one's streamed tensors have no lasting device copy).
std::vector<named_tensor> full_pin_tensors(const pin_handle& pin) {
  if (pin.partial())
    fail(errc::invalid_argument, "the pin of '" + pin.model() + "' is partial: its streamed tensors have no "
                                 "lasting device copy; use stream(), or pin with more room");
  return pin.tensors().tensors;
}

/// A state dict: the tensors by name, the cache's own memory (no copy). Built with the GIL held.
py::dict state_dict_of(const std::vector<named_tensor>& tensors) {
  py::dict out;
  for (const auto& t : tensors)
    out[py::str(t.name)] = t.tensor;
  return out;
}

/// Python stage callables of a scheduler's jobs, by id. Touched only with the GIL held: the C++ jobs hold
/// ids, never Python objects, so a job that ends or is dropped on a scheduler thread touches no Python
/// object there. A stage takes its callable out when it runs; those of jobs that never ran go with the
/// scheduler.
struct stage_works {
  std::map<uint64_t, py::object> works;
  uint64_t next = 1;
};

thread_local bool on_scheduler_worker = false;  // set while a stage's Python work runs on this thread

/// Drops a reference to a scheduler. The last one ends it (queued jobs cancelled, running ones waited
/// for), which must happen without the GIL (their work needs it) and never on one of its own workers (it
/// would wait for itself): whoever drops it last, `close` or a `submit` that raced it.
void drop_scheduler(std::shared_ptr<scheduler> s, const std::shared_ptr<runtime_box>& owner) noexcept {
  if (!s)
    return;
  try {
    if (interpreter_finalizing()) {
      // Its workers can no longer take the GIL to finish: leave it (the package closes schedulers at exit).
      new std::shared_ptr<scheduler>(std::move(s));
      return;
    }
    if (on_scheduler_worker) {
      // Inside one of its own stages: another thread ends it once this stage has returned.
      std::thread([s = std::move(s), owner]() mutable { s.reset(); }).detach();
      return;
    }
    without_gil unlocked;
    s.reset();
  } catch (...) {  // no thread could be started: leave it rather than end it here
    new std::shared_ptr<scheduler>(std::move(s));
  }
}

class py_scheduler {
public:
  py_scheduler(std::shared_ptr<runtime_box> owner, scheduler_options options)
    : owner_(std::move(owner)), works_(std::make_shared<stage_works>()) {
    without_gil unlocked;
    scheduler_ = std::make_shared<scheduler>(*owner_->rt, options);
  }
  ~py_scheduler() { close(); }

  /// Cancels queued jobs and waits for the running ones, with the GIL let go (their work needs it).
  void close() {
    auto s = std::move(scheduler_);  // under the GIL: a second close, or a submit after, finds none
    if (!s)
      return;
    if (!interpreter_finalizing() && !on_scheduler_worker) {
      // A submit in flight holds it too: wait for it to let go, so that this close is the one that ends
      // the scheduler and waits for its running jobs, as documented.
      without_gil unlocked;
      while (s.use_count() > 1)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    drop_scheduler(std::move(s), owner_);
  }

  std::shared_ptr<py_job_box> submit(const py::list& stages, const std::string& name, int priority,
                                     std::optional<double> deadline) {
    auto s = scheduler_;  // under the GIL: a concurrent close cannot destroy it under this call
    struct let_go {       // on every way out: if a close raced this call, this reference may be the last
      std::shared_ptr<scheduler>& s;
      const std::shared_ptr<runtime_box>& owner;
      ~let_go() { drop_scheduler(std::move(s), owner); }
    } let_go_of_it{s, owner_};
    if (!s)
      fail(errc::shutting_down, "the scheduler is closed");
    job_spec job;
    job.name = name;
    job.priority = priority;
    if (deadline)
      job.deadline = *wait_of(deadline);
    std::vector<uint64_t> ids;
    auto forget = [&] {  // a plan refused: its callables are not kept
      for (auto id : ids)
        works_->works.erase(id);
    };
    try {
      for (const auto& item : stages) {
        auto st = py::reinterpret_borrow<py::object>(item);
        stage_spec spec;
        spec.models = st.attr("models").cast<std::vector<std::string>>();
        spec.working_bytes = st.attr("working").cast<bytes_t>();
        spec.name = st.attr("name").cast<std::string>();
        auto device = device_of(st.attr("device"));
        spec.target = device.where == py_device::any   ? stage_target::any_gpu()
                      : device.where == py_device::cpu ? stage_target::cpu()
                                                       : stage_target::on(device.number);
        if (!PyCallable_Check(st.attr("work").ptr()))  // refused now, not when a worker gets to it
          fail(errc::invalid_argument, "stage " + std::to_string(ids.size()) + " ('" + spec.name
                                         + "'): its work is not callable: " + py::repr(st.attr("work")).cast<std::string>());
        auto id = works_->next++;
        works_->works[id] = st.attr("work");
        ids.push_back(id);
        std::weak_ptr<stage_works> works = works_;
        spec.work = [works, id](stage_context& context) {
          py::gil_scoped_acquire gil;
          auto all = works.lock();  // the scheduler waits for running stages before its works go
          if (!all)
            throw std::runtime_error("the scheduler was closed");
          auto found = all->works.find(id);
          if (found == all->works.end())
            throw std::runtime_error("the stage's work is gone");
          auto work = std::move(found->second);
          all->works.erase(found);
          auto stage = std::make_shared<py_stage>(&context);
          struct end_stage {  // on every way out, with the GIL held
            std::shared_ptr<py_stage> stage;
            bool& flag;
            ~end_stage() {
              stage->end();
              flag = false;
            }
          } guard{stage, on_scheduler_worker};
          on_scheduler_worker = true;
          try {
            work(stage);
            work = py::object();  // dropped here, with the GIL, while this thread is marked
          } catch (py::error_already_set& e) {
            work = py::object();
            throw std::runtime_error(e.what());  // text now: the scheduler's thread does not hold the GIL
          }
        };
        job.stages.push_back(std::move(spec));
      }
    } catch (...) {
      forget();
      throw;
    }
    try {
      without_gil unlocked;
      return std::make_shared<py_job_box>(py_job_box{s->submit(std::move(job)), owner_});
    } catch (...) {
      forget();
      throw;
    }
  }

private:
  std::shared_ptr<runtime_box> owner_;  // declared first: the runtime outlives its scheduler
  std::shared_ptr<stage_works> works_;
  std::shared_ptr<scheduler> scheduler_;
};

/// Schedulers still open, closed at interpreter exit while threads can still take the GIL (touched only
/// with the GIL held).
std::vector<std::weak_ptr<py_scheduler>>& open_schedulers() {
  static auto* all = new std::vector<std::weak_ptr<py_scheduler>>();
  return *all;
}

py::dict status_dict(const job_status& s) {
  static const char* states[] = {"queued", "running", "done", "failed", "cancelled"};
  py::dict out;
  out["state"] = states[static_cast<int>(s.state)];
  out["stage"] = s.stage;
  out["device"] = s.device == cpu_device ? py::object(py::str("cpu")) : py::object(py::int_(s.device));
  out["passed_over"] = s.passed_over;
  if (s.error) {
    out["code"] = to_string(s.error->code);
    out["error"] = s.error->detail;
  } else {
    out["code"] = py::none();
    out["error"] = py::none();
  }
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
  void close() {
    auto box = std::move(box_);  // under the GIL: a second close finds nothing to do
    if (!box)
      return;
    without_gil unlocked;
    box->rt->shutdown();
  }
  bool closed() const { return !box_; }

  std::shared_ptr<py_scheduler> make_scheduler(std::size_t workers_per_device, std::size_t cpu_workers,
                                               const std::string& order, bool prefetch, double wait_for_room) {
    scheduler_options o;
    o.workers_per_device = workers_per_device;
    o.cpu_workers = cpu_workers;
    if (order == "warm_first")
      o.order.order = order_options::policy::warm_first;
    else if (order != "fifo")
      fail(errc::invalid_argument, "order must be \"fifo\" or \"warm_first\", not \"" + order + "\"");
    o.prefetch = prefetch;
    o.wait_for_room = *wait_of(wait_for_room);
    auto made = std::make_shared<py_scheduler>(box(), o);
    auto& all = open_schedulers();
    all.erase(std::remove_if(all.begin(), all.end(), [](const auto& w) { return w.expired(); }), all.end());
    all.push_back(made);
    return made;
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
  std::string add_synthetic(const std::string& id, const std::vector<int64_t>& numels, int64_t seed) {
    if (auto err = rt().models().add(synthetic_model(id, numels, bytes_of(seed, "seed"))))
      throw request_error(*err);
    return id;
  }
  std::string add_file(const std::string& id, const std::vector<std::string>& files,
                       const std::vector<std::string>& order, const std::vector<std::string>& required,
                       std::optional<device_index> device, bool replace) {
    file_model_spec spec{id, files, order, required, device};
    auto d = describe_files(spec);
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
  void replace_synthetic(const std::string& id, const std::vector<int64_t>& numels, int64_t seed) {
    rt().replace_model(synthetic_model(id, numels, bytes_of(seed, "seed")));
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

#if MCACHE_PYTHON_FLEET
void bind_fleet(py::module_& m);  // fleet_module.cpp
#endif

PYBIND11_MODULE(_core, m) {
  py::module_::import("torch");
  main_thread_ident() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  // Close the schedulers still open before the interpreter finalizes (their stages need the GIL).
  py::module_::import("atexit").attr("register")(py::cpp_function([] {
    for (auto& w : open_schedulers())
      if (auto s = w.lock())
        s->close();
    open_schedulers().clear();
  }));
  m.doc() = "mcache's C++ core; use the `mcache` package.";

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

  py::class_<py_lease, std::shared_ptr<py_lease>>(m, "Lease")
    .def_property_readonly("model", &py_lease::model)
    .def_property_readonly("bytes", &py_lease::bytes)
    .def_property_readonly("held", &py_lease::held)
    .def("release", &py_lease::release, "Ends the lease; a second call does nothing.")
    .def("tensor", [](const py_lease& l, const std::string& name) {
      for (const auto& t : l.locked([](const lease& h) { return h.host().tensors; }))
        if (t.name == name)
          return t.tensor;
      fail(errc::invalid_argument, "model '" + l.model() + "' has no tensor '" + name + "'");
    }, "The RAM copy of a tensor: the cache's own memory, no copy.")
    .def("state_dict", [](const py_lease& l) {
      return state_dict_of(l.locked([](const lease& h) { return h.host().tensors; }));
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
    .def_property_readonly("torch_device", [](const py_pin& p) {
      return p.locked([](const pin_handle& h) { return h.torch_device(); });
    }, "The torch.device the pin's tensors are on (cpu for a simulated device).")
    .def_property_readonly("held", &py_pin::held)
    .def_property_readonly("partial", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.partial(); }); })
    .def_property_readonly("resident_bytes", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.resident_bytes(); }); })
    .def_property_readonly("working_bytes", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.working_bytes(); }); })
    .def("release", &py_pin::release, "Ends the pin; a second call does nothing.")
    .def("tensor", [](const py_pin& p, const std::string& name) -> py::object {
      auto t = p.locked([&](const pin_handle& h) { return h.tensor(name); });
      if (!t.defined())
        return py::none();  // no such tensor, or it is not resident (stream it)
      return py::cast(t);
    }, "The device copy of a tensor (None if it is not resident: use stream()). No copy.")
    .def("state_dict", [](const py_pin& p) {
      return state_dict_of(p.locked([](const pin_handle& h) { return full_pin_tensors(h); }));
    }, "Every tensor's device copy, by name (a full pin only). No copy.")
    .def("stream", [](std::shared_ptr<py_pin> p) {
      std::unique_ptr<tensor_stream> s{p->locked([](const pin_handle& h) { return new tensor_stream(h.stream()); })};
      return std::make_shared<py_stream>(std::move(s), [p] {
        if (!p->held())
          fail(errc::invalid_pin, "the pin of '" + p->model() + "' was released while its stream was in use");
      });
    })
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

  py::class_<py_stage, std::shared_ptr<py_stage>>(m, "StageContext")
    .def_property_readonly("job", [](const py_stage& c) { return c.get().job(); })
    .def_property_readonly("stage", [](const py_stage& c) { return c.get().stage(); })
    .def_property_readonly("device", [](const py_stage& c) -> py::object {
      auto d = c.get().device();
      return d == cpu_device ? py::object(py::str("cpu")) : py::object(py::int_(d));
    })
    .def_property_readonly("torch_device", [](const py_stage& c) { return c.get().torch_device(); },
                           "The torch.device of the stage (cpu for a simulated device or a CPU stage); "
                           "current on the stage's thread while its work runs.")
    .def_property_readonly("cancelled", [](const py_stage& c) { return c.get().cancelled(); })
    .def("state_dict", [](const py_stage& c, const std::string& model) {
      return state_dict_of(full_pin_tensors(c.get().pin(model)));
    },
         "The stage's pinned tensors of `model`, by name (a full pin). No copy.")
    .def("tensor", [](const py_stage& c, const std::string& model, const std::string& name) -> py::object {
      auto t = c.get().pin(model).tensor(name);
      return t.defined() ? py::cast(t) : py::none();
    })
    .def("partial", [](const py_stage& c, const std::string& model) { return c.get().pin(model).partial(); })
    .def("stream", [](std::shared_ptr<py_stage> c, const std::string& model) {
      // On the stage's thread, the GIL held, as every ctx call: the stream's own steps let the GIL go.
      std::unique_ptr<tensor_stream> s{new tensor_stream(c->get().pin(model).stream())};
      return std::make_shared<py_stream>(std::move(s), [c, model] {
        if (c->ended())
          fail(errc::invalid_pin, "the stage that streamed '" + model + "' has ended, and its pin with it");
      });
    }, "A Stream of `model`'s tensors, as Pin.stream(): a streamed tensor is valid until the next step.");

  py::class_<py_job_box, std::shared_ptr<py_job_box>>(m, "Job")
    .def_property_readonly("id", [](const py_job_box& j) { return j.job.id(); })
    .def("status", [](const py_job_box& j) { return status_dict(j.job.status()); })
    .def("wait", [](const py_job_box& j, std::optional<double> timeout) -> py::object {
      // With the GIL let go (its stages' work needs it), taking signals so that Ctrl-C interrupts.
      auto until = timeout ? std::optional<std::chrono::steady_clock::time_point>(
                               std::chrono::steady_clock::now() + *wait_of(timeout))
                           : std::nullopt;
      std::optional<job_status> s;
      wait_taking_signals([&] {
        std::chrono::nanoseconds slice = signal_slice;
        if (until)
          slice = std::min(slice, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::max(*until - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero())));
        s = j.job.wait_for(slice);
        return s || (until && std::chrono::steady_clock::now() >= *until);
      });
      return s ? py::object(status_dict(*s)) : py::none();
    }, py::arg("timeout") = py::none(), "The final status as a dict, or None if it did not end in time.")
    .def("cancel", [](py_job_box& j) { j.job.cancel(); });

  py::class_<py_scheduler, std::shared_ptr<py_scheduler>>(m, "Scheduler")
    .def("submit", &py_scheduler::submit, py::arg("stages"), py::arg("name") = "", py::arg("priority") = 0,
         py::arg("deadline") = py::none())
    .def("close", &py_scheduler::close)
    .def("__enter__", [](std::shared_ptr<py_scheduler> s) { return s; })
    .def("__exit__", [](py_scheduler& s, py::args) { s.close(); return false; });

  py::class_<py_runtime>(m, "Runtime")
    .def(py::init<const std::string&>(), py::arg("config_json"))
    .def("session", &py_runtime::session, py::arg("name") = "")
    .def("close", &py_runtime::close)
    .def_property_readonly("closed", &py_runtime::closed)
    .def_property_readonly("device_count", [](py_runtime& r) { return r.rt().device_count(); })
    .def("status_json", &py_runtime::status_json)
    .def("scheduler", &py_runtime::make_scheduler, py::arg("workers_per_device") = 1, py::arg("cpu_workers") = 1,
         py::arg("order") = "fifo", py::arg("prefetch") = false, py::arg("wait_for_room") = 60.0)
    .def("prometheus_text", &py_runtime::prometheus)
    .def("add_synthetic", &py_runtime::add_synthetic, py::arg("id"), py::arg("numels"), py::arg("seed") = 0)
    .def("add_file", &py_runtime::add_file, py::arg("id"), py::arg("files"), py::arg("order"), py::arg("required"),
         py::arg("device"), py::arg("replace") = false)
    .def("remove", &py_runtime::remove, py::arg("id"))
    .def("replace_synthetic", &py_runtime::replace_synthetic, py::arg("id"), py::arg("numels"), py::arg("seed") = 0)
    .def("add_folder", [](py_runtime& r, const std::string& folder) { return r.register_found(scan_folder(folder)); })
    .def("add_manifest", [](py_runtime& r, const std::string& path) { return r.register_found(read_manifest(path)); })
    .def("model_ids", &py_runtime::ids)
    .def("describe", &py_runtime::describe);

#if MCACHE_PYTHON_FLEET
  bind_fleet(m);
#endif
  m.def("_cpp_cycle_seconds", &cpp_cycle_seconds, py::arg("runtime"), py::arg("model"), py::arg("device"), py::arg("n"));
}
