#pragma once
// The scheduler as Python drives it: stages whose work is a Python callable, their context, and job
// handles (Note [The Python binding], module.cpp: "The scheduler").

#include "python/binding.hpp"
#include "runtime/scheduler.hpp"

namespace mcache::python {

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

struct stage_works;

class py_scheduler {
public:
  py_scheduler(std::shared_ptr<runtime_box> owner, scheduler_options options);
  ~py_scheduler() { close(); }

  /// Cancels queued jobs and waits for the running ones, with the GIL let go (their work needs it).
  void close();
  std::shared_ptr<py_job_box> submit(const py::object& stages, const std::string& name, const py::object& priority,
                                     const py::object& deadline);

private:
  std::shared_ptr<runtime_box> owner_;  // declared first: the runtime outlives its scheduler
  std::shared_ptr<stage_works> works_;
  std::shared_ptr<scheduler> scheduler_;
};

/// A new scheduler, on the list of those closed at interpreter exit (with the GIL held).
std::shared_ptr<py_scheduler> open_scheduler(std::shared_ptr<runtime_box> owner, scheduler_options options);
/// Closes the schedulers still open, before the interpreter finalizes: their stages need the GIL.
void close_open_schedulers();

/// StageContext, Job and Scheduler.
void bind_scheduler(py::module_& m);

} // namespace mcache::python
