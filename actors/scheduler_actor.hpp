#pragma once
// The scheduler actor: owns the job queue (Note [Scheduling order]) and moves each running job through
// Note [Job lifecycle] (runtime/scheduler.hpp) with asynchronous requests to the tiers. Stage work runs on
// the workers' executors, never on this actor's thread.

#include "messages/interfaces.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/timeline.hpp"
#include "runtime/core/transfer/executor.hpp"
#include "runtime/scheduler.hpp"

#include <caf/actor_system.hpp>
#include <spdlog/spdlog.h>

#include <map>
#include <memory>

namespace mcache {

namespace detail {
/// What a job's handles and the scheduler actor share: the status (under the mutex) and the cancel flag
/// that stage work polls.
struct job_shared {
  job_id id = 0;
  mutable std::mutex mutex;
  std::condition_variable changed;
  job_status status;
  std::shared_ptr<std::atomic<bool>> stop_flag = std::make_shared<std::atomic<bool>>(false);
  scheduler_actor scheduler;  // where cancel goes
  std::function<void(const job_status&)> on_end;  // job_spec::on_end, taken (under the mutex) when it fires

  template <class F>
  void update(F&& f) {
    std::function<void(const job_status&)> ended;
    job_status final_status;
    {
      std::lock_guard<std::mutex> guard{mutex};
      f(status);
      if (status.ended() && on_end) {
        ended = std::move(on_end);
        on_end = nullptr;
        final_status = status;
      }
    }
    changed.notify_all();
    if (!ended)
      return;
    // It must not throw; one that does is contained here, or it would end the scheduler actor (or a
    // worker) and every later job with it.
    try {
      ended(final_status);
    } catch (const std::exception& e) {
      spdlog::error("mcache: job {}'s on_end threw (it must not): {}", id, e.what());
    } catch (...) {
      spdlog::error("mcache: job {}'s on_end threw (it must not)", id);
    }
  }
};
} // namespace detail

/// A job as submitted: the plan, what the order needs, and the shared status.
struct job_submission {
  job_spec spec;
  queued_job order;
  std::shared_ptr<detail::job_shared> shared;
};

struct scheduler_actor_config {
  scheduler_options options;
  ram_cache_actor ram;
  std::vector<device_actor> devices;  // index i is device i
  std::vector<c10::Device> torch_devices;  // index i is device i's LibTorch device, current while a stage on it works
  device_actor cpu;                   // the CPU pin tier
  std::map<device_index, std::shared_ptr<executor>> workers;  // per GPU, and cpu_device for CPU jobs
  std::map<device_index, std::size_t> worker_count;           // how many jobs each may run at once
  std::shared_ptr<timeline> trace;                            // may be null
  const catalog* models = nullptr;  // maps registered ids to generations (Note [Remove and replace]); may be null
};

scheduler_actor spawn_scheduler(caf::actor_system& sys, scheduler_actor_config config);

} // namespace mcache
