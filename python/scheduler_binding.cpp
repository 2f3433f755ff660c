#include "python/scheduler_binding.hpp"
#include "python/handles.hpp"
#include "python/signals.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <thread>

namespace mcache::python {

/// Python stage callables of a scheduler's jobs, by id. Touched only with the GIL held: the C++ jobs hold
/// ids, never Python objects, so a job that ends or is dropped on a scheduler thread touches no Python
/// object there. A stage takes its callable out when it runs; those of jobs that never ran go with the
/// scheduler.
struct stage_works {
  std::map<uint64_t, py::object> works;
  uint64_t next = 1;
};

namespace {

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
  out["device"] = device_name(s.device);
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

} // namespace

py_scheduler::py_scheduler(std::shared_ptr<runtime_box> owner, scheduler_options options)
  : owner_(std::move(owner)), works_(std::make_shared<stage_works>()) {
  without_gil unlocked;
  scheduler_ = std::make_shared<scheduler>(*owner_->rt, options);
}

void py_scheduler::close() {
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

std::shared_ptr<py_job_box> py_scheduler::submit(const py::object& stages, const std::string& name,
                                                 const py::object& priority, const py::object& deadline) {
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
  job.priority = static_cast<int>(integer_of(priority, "priority", std::numeric_limits<int>::min(),
                                             std::numeric_limits<int>::max()));
  job.deadline = wait_of(deadline, "deadline");
  if (!py::isinstance<py::list>(stages) && !py::isinstance<py::tuple>(stages))
    fail(errc::invalid_argument, "a job's stages are a list of Stage, not " + py::repr(stages).cast<std::string>());
  std::vector<uint64_t> ids;
  auto forget = [&] {  // a plan refused: its callables are not kept
    for (auto id : ids)
      works_->works.erase(id);
  };
  try {
    for (const auto& item : stages) {
      auto st = py::reinterpret_borrow<py::object>(item);
      for (const char* field : {"models", "work", "device", "working", "name"})
        if (!py::hasattr(st, field))
          fail(errc::invalid_argument, "stage " + std::to_string(ids.size()) + " is not a Stage: "
                                         + py::repr(st).cast<std::string>());
      stage_spec spec;
      spec.models = st.attr("models").cast<std::vector<std::string>>();
      spec.working_bytes = bytes_of(st.attr("working"), "working");
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

std::shared_ptr<py_scheduler> open_scheduler(std::shared_ptr<runtime_box> owner, scheduler_options options) {
  auto made = std::make_shared<py_scheduler>(std::move(owner), options);
  auto& all = open_schedulers();
  all.erase(std::remove_if(all.begin(), all.end(), [](const auto& w) { return w.expired(); }), all.end());
  all.push_back(made);
  return made;
}

void close_open_schedulers() {
  for (auto& w : open_schedulers())
    if (auto s = w.lock())
      s->close();
  open_schedulers().clear();
}

void bind_scheduler(py::module_& m) {
  py::class_<py_stage, std::shared_ptr<py_stage>>(m, "StageContext")
    .def_property_readonly("job", [](const py_stage& c) { return c.get().job(); })
    .def_property_readonly("stage", [](const py_stage& c) { return c.get().stage(); })
    .def_property_readonly("device", [](const py_stage& c) { return device_name(c.get().device()); })
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
    .def("wait", [](const py_job_box& j, const py::object& timeout_seconds) -> py::object {
      auto timeout = wait_of(timeout_seconds, "timeout");
      // With the GIL let go (its stages' work needs it), taking signals so that Ctrl-C interrupts.
      auto until = timeout ? std::optional<std::chrono::steady_clock::time_point>(
                               std::chrono::steady_clock::now() + *timeout)
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
    .def("submit", &py_scheduler::submit, py::arg("stages"), py::arg("name") = "", py::arg("priority") = py::int_(0),
         py::arg("deadline") = py::none())
    .def("close", &py_scheduler::close)
    .def("__enter__", [](std::shared_ptr<py_scheduler> s) { return s; })
    .def("__exit__", [](py_scheduler& s, py::args) { s.close(); return false; });
}

} // namespace mcache::python
