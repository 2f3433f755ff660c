#include "runtime/scheduler.hpp"

#include "actors/scheduler_actor.hpp"
#include "messages/waits.hpp"
#include "runtime/core/format.hpp"
#include "runtime/core/policies/placement_policy.hpp"
#include "runtime/runtime.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <cmath>
#include <map>

namespace mcache {

const char* to_string(job_state state) {
  switch (state) {
    case job_state::queued: return "queued";
    case job_state::running: return "running";
    case job_state::done: return "done";
    case job_state::failed: return "failed";
    case job_state::cancelled: return "cancelled";
  }
  return "?";
}

// -- stage_context ----------------------------------------------------------------------------------------

stage_context::stage_context(job_id job, std::size_t stage, device_index device, c10::Device torch_device,
                             std::vector<ram_lease> leases, std::vector<device_pin> pins,
                             std::shared_ptr<const std::atomic<bool>> cancelled)
  : job_(job), stage_(stage), device_(device), torch_device_(torch_device), leases_(std::move(leases)),
    cancelled_(std::move(cancelled)) {
  // Restored when the context ends, before the worker thread takes its next stage. (With LibTorch 1.13 on
  // CUDA 12 or later, restoring device 0 makes its primary context exist, if the process had none there.)
  if (torch_device_.type() != c10::DeviceType::CPU)
    current_.reset_device(torch_device_);
  for (auto& grant : pins) {
    auto slots = std::max<size_t>(2, grant.staging_slots);
    auto ring = std::make_shared<staging_ring>(grant.backend, slots, grant.staging_bytes / slots);
    // The scheduler releases the pin after the stage: this handle's release only ends its use.
    pins_.push_back(pin_handle{release_token{[] {}}, std::move(grant), std::move(ring)});
  }
}

stage_context::~stage_context() = default;

// A stage's models are named as its plan names them (registered ids); its leases and pins carry the
// generation each was submitted with ("unet#2" once "unet" was replaced). A job names a model once.
const pin_handle& stage_context::pin(const model_id& model) const {
  for (const auto& p : pins_)
    if (p.model() == model || registered_name(p.model()) == model)
      return p;
  throw request_error(failure{errc::invalid_argument, "stage " + std::to_string(stage_) + " of job "
                                                        + std::to_string(job_) + " has no model '" + model + "'"});
}

const host_model& stage_context::host(const model_id& model) const {
  for (const auto& l : leases_)
    if (l.model == model || registered_name(l.model) == model)
      return *l.payload;
  throw request_error(failure{errc::invalid_argument, "stage " + std::to_string(stage_) + " of job "
                                                        + std::to_string(job_) + " has no model '" + model + "'"});
}

// -- job_handle -------------------------------------------------------------------------------------------

job_id job_handle::id() const { return shared_ ? shared_->id : 0; }

namespace {
void require_job(bool present) {
  if (!present)
    throw request_error(failure{errc::invalid_argument, "an empty job_handle (default-made or moved from) has no job"});
}
} // namespace

job_status job_handle::status() const {
  require_job(shared_ != nullptr);
  std::lock_guard<std::mutex> guard{shared_->mutex};
  return shared_->status;
}

job_status job_handle::wait() const {
  require_job(shared_ != nullptr);
  std::unique_lock<std::mutex> lock{shared_->mutex};
  shared_->changed.wait(lock, [&] { return shared_->status.ended(); });
  return shared_->status;
}

std::optional<job_status> job_handle::wait_for(std::chrono::nanoseconds timeout) const {
  require_job(shared_ != nullptr);
  if (waits_forever(timeout))  // the condition variable adds it to now: near max() that sum overflows
    return wait();
  std::unique_lock<std::mutex> lock{shared_->mutex};
  if (!shared_->changed.wait_for(lock, timeout, [&] { return shared_->status.ended(); }))
    return std::nullopt;
  return shared_->status;
}

void job_handle::cancel() {
  if (!shared_ || status().ended())
    return;
  caf::anon_send(shared_->scheduler, cancel_atom::value, static_cast<std::uint64_t>(shared_->id));
}

// -- scheduler --------------------------------------------------------------------------------------------

struct scheduler::impl {
  runtime* rt = nullptr;
  scheduler_options options;
  scheduler_actor actor;
  std::vector<std::shared_ptr<executor>> executors;
  std::atomic<job_id> next_id{1};

  [[noreturn]] static void refuse(errc code, std::string text) { throw request_error(failure{code, std::move(text)}); }

  /// The largest working memory a stage may ask of the devices it may run on.
  bytes_t usable(device_index d) const {
    const auto& o = rt->options();
    if (d == cpu_device)
      return o.cpu_working_budget_bytes;
    const auto& dev = o.devices.at(static_cast<std::size_t>(d));
    return dev.budget_bytes - dev.reserve_bytes;
  }

  /// Why a stage could never run on device `d` (`could_ever_hold`, with its models together: a stage pins
  /// them together, so one left waiting for room behind the others would wait for ever, holding its
  /// device's pin turn), or nothing.
  std::optional<std::string> unfit(const stage_spec& s, const std::vector<descriptor_ptr>& models,
                                   device_index d) const {
    auto room = usable(d);
    bool partial = true;
    size_t slots = 0;  // a CPU pin copies nothing and stages nothing
    if (d != cpu_device) {
      const auto& dev = rt->options().devices.at(static_cast<std::size_t>(d));
      partial = dev.partial_loading;
      slots = dev.staging_slots;
    }
    bytes_t least = 0;
    bytes_t whole = 0;
    for (const auto& m : models) {
      whole += m->bytes;
      if (d != cpu_device)  // as the device tier counts it: each tensor as its device copy costs
        least += least_pin_bytes(*m, partial, slots, [&](bytes_t b) { return rt->device_footprint(d, b); });
    }
    if (could_ever_hold(room, least, s.working_bytes))
      return std::nullopt;
    auto on = d == cpu_device ? std::string{"the CPU"} : "device " + std::to_string(d);
    if (s.working_bytes > room)
      return "asks for " + format_bytes(s.working_bytes) + " of working memory; " + on + " has " + format_bytes(room);
    if (!partial)
      return "needs " + format_bytes(whole) + " of models and " + format_bytes(s.working_bytes)
             + " of working memory at once on " + on + ", which has " + format_bytes(room) + " and loads no model in part";
    return "needs at least " + format_bytes(least) + " of models (loaded in part: required tensors and staging for "
           "the rest) and " + format_bytes(s.working_bytes) + " of working memory at once on " + on + ", which has "
           + format_bytes(room);
  }

  /// Checks a plan against the catalog and the budgets; fills the order's view of it.
  queued_job validate(const job_spec& job) const {
    auto name = job.name.empty() ? std::string{"the job"} : "job '" + job.name + "'";
    if (job.stages.empty())
      refuse(errc::invalid_argument, name + " has no stages");
    if (job.deadline && job.deadline->count() < 0)
      refuse(errc::invalid_argument, name + " has a negative deadline");
    queued_job q;
    q.priority = job.priority;
    if (job.deadline && !waits_forever(*job.deadline))
      q.deadline = std::chrono::steady_clock::now() + *job.deadline;
    std::optional<stage_target> home;  // the first stage that needs a GPU decides the worker
    std::vector<std::pair<std::size_t, std::vector<descriptor_ptr>>> any_gpu;  // stages for any GPU, their models
    std::optional<std::string> first_unfit;
    std::map<model_id, bytes_t> sizes;
    const auto devices = static_cast<device_index>(rt->device_count());
    for (std::size_t k = 0; k < job.stages.size(); ++k) {
      const auto& s = job.stages[k];
      auto where = name + ", stage " + std::to_string(k);
      if (!s.work)
        refuse(errc::invalid_argument, where + " has no work");
      if (s.target.where == stage_target::kind::device && (s.target.device < 0 || s.target.device >= devices))
        refuse(errc::invalid_device, where + " targets device " + std::to_string(s.target.device) + "; this runtime has "
                                       + std::to_string(devices) + " device(s)");
      if (s.target.where == stage_target::kind::any_gpu && devices == 0)
        refuse(errc::invalid_device, where + " targets any GPU; this runtime has no devices");
      bytes_t total = 0;
      std::vector<descriptor_ptr> described;  // looked up once: a concurrent remove_model must not change the answer
      for (const auto& m : s.models) {
        auto d = rt->models().find(m);
        if (!d)
          refuse(errc::unknown_model, where + " needs '" + m + "', which is not in the catalog");
        sizes[m] = d->bytes;
        described.push_back(d);
        if (std::count(s.models.begin(), s.models.end(), m) > 1)
          refuse(errc::invalid_argument, where + " names '" + m + "' twice");
        total += d->bytes;
        q.models.push_back({m, d->bytes});
      }
      if (total > rt->options().ram_budget_bytes)
        refuse(errc::model_too_large, where + "'s models need " + format_bytes(total) + " of RAM together; the RAM budget is "
                                        + format_bytes(rt->options().ram_budget_bytes));
      if (s.target.where == stage_target::kind::any_gpu) {
        any_gpu.push_back({k, described});  // decided below, once the job's device is known
      } else if (auto why = unfit(s, described, s.target.device)) {
        refuse(errc::model_too_large, where + " " + *why);
      }
      if (!home && s.target.where != stage_target::kind::cpu)
        home = s.target;
    }
    q.target = home ? *home : stage_target::cpu();
    // Stages for any GPU run on the job's device: the one it targets first, else its worker's (Note
    // [Scheduling order]). A job never goes to a device where one of them could never fit.
    for (device_index d = 0; d < devices; ++d) {
      if (q.target.where == stage_target::kind::device && d != q.target.device)
        continue;
      for (const auto& [k, described] : any_gpu)
        if (auto why = unfit(job.stages[k], described, d)) {
          q.unfit_devices.insert(d);
          if (!first_unfit)
            first_unfit = name + ", stage " + std::to_string(k) + " " + *why;
          break;
        }
    }
    const auto candidates = q.target.where == stage_target::kind::device ? 1 : static_cast<std::size_t>(devices);
    if (!any_gpu.empty() && q.unfit_devices.size() == candidates)
      refuse(errc::model_too_large, *first_unfit + (candidates > 1 ? " (and fits no other device)" : ""));
    // Only models pinned on a GPU cost a copy: CPU stages' models count for their disk loads alone.
    q.models.clear();
    q.loaded_only.clear();
    for (const auto& s : job.stages)
      for (const auto& m : s.models)
        (s.target.where == stage_target::kind::cpu ? q.loaded_only : q.models).push_back({m, sizes.at(m)});
    return q;
  }
};

scheduler::scheduler(runtime& rt, scheduler_options options) : impl_(std::make_unique<impl>()) {
  detail::release_thread_logger release_logger;
  if (options.workers_per_device == 0 && rt.device_count() > 0)
    impl::refuse(errc::invalid_argument, "workers_per_device is 0: jobs on GPUs could never run");
  if (options.cpu_workers == 0)
    impl::refuse(errc::invalid_argument, "cpu_workers is 0: jobs without GPU stages could never run");
  if (options.wait_for_room <= std::chrono::nanoseconds::zero())
    impl::refuse(errc::invalid_argument, "wait_for_room must be more than 0 (a century or more, nanoseconds::max() "
                                         "included, waits for ever)");
  if (options.order.window == 0)
    impl::refuse(errc::invalid_argument, "the warm_first window is 0 jobs; it must be at least 1");
  if (!(options.order.disk_cost >= 0) || std::isinf(options.order.disk_cost))  // also NaN
    impl::refuse(errc::invalid_argument, "the order's disk_cost must be a finite number, 0 or more, not "
                                         + std::to_string(options.order.disk_cost));
  impl_->rt = &rt;
  if (!options.check_invariants)
    options.check_invariants = rt.options().check_invariants;
  impl_->options = options;
  scheduler_actor_config config;
  config.options = options;
  config.ram = rt.ram_cache();
  for (std::size_t d = 0; d < rt.device_count(); ++d) {
    config.devices.push_back(rt.device(static_cast<device_index>(d)));
    auto pool = std::shared_ptr<executor>(make_thread_pool_executor(options.workers_per_device));
    impl_->executors.push_back(pool);
    config.workers[static_cast<device_index>(d)] = pool;
    config.worker_count[static_cast<device_index>(d)] = options.workers_per_device;
  }
  config.cpu = rt.device(cpu_device);
  auto cpu_pool = std::shared_ptr<executor>(make_thread_pool_executor(options.cpu_workers));
  impl_->executors.push_back(cpu_pool);
  config.workers[cpu_device] = cpu_pool;
  config.worker_count[cpu_device] = options.cpu_workers;
  for (std::size_t d = 0; d < rt.device_count(); ++d)
    config.torch_devices.push_back(rt.torch_device(static_cast<device_index>(d)));
  config.trace = rt.trace();
  config.models = &rt.models();  // the scheduler ends before its runtime
  impl_->actor = spawn_scheduler(rt.system(), std::move(config));
  rt.name_holder(impl_->actor->id(), "scheduler");
}

scheduler::~scheduler() {
  {
    detail::release_thread_logger release_logger;
    caf::scoped_actor self{impl_->rt->system()};
    self->request(impl_->actor, caf::infinite, shutdown_atom::value).receive([](bool) {}, [](caf::error&) {});
    caf::anon_send_exit(impl_->actor, caf::exit_reason::user_shutdown);
  }
  for (auto& e : impl_->executors)
    e->join();
}

job_handle scheduler::submit(job_spec job) {
  auto order = impl_->validate(job);
  auto shared = std::make_shared<detail::job_shared>();
  shared->id = impl_->next_id++;
  shared->scheduler = impl_->actor;
  shared->on_end = std::move(job.on_end);
  order.id = shared->id;
  auto submission = std::make_shared<job_submission>();
  submission->spec = std::move(job);
  submission->order = std::move(order);
  submission->shared = shared;
  caf::anon_send(impl_->actor, submit_atom::value, std::move(submission));
  job_handle h;
  h.shared_ = std::move(shared);
  return h;
}

} // namespace mcache
