#pragma once
// The multi-session scheduler: jobs made of stages, run over the runtime's devices by workers, in an order
// that moves few bytes without starving anyone (Note [Scheduling order], core/scheduling/job_queue.hpp).
//
//   mcache::scheduler sched{rt, {}};
//   mcache::job_spec job;
//   job.stages.push_back({{"text_encoder"}, mcache::stage_target::cpu(), 0, encode});
//   job.stages.push_back({{"unet"}, mcache::stage_target::any_gpu(), 256 << 20, denoise});
//   auto handle = sched.submit(std::move(job));   // bad plans throw request_error here
//   handle.wait();                                 // done, or failed with the typed error
//
// Note [Job lifecycle]: one home for a job's states (the scheduler actor moves them; a handle reads them).
//
//     queued ──picked by a free worker──▶ running stage k: acquiring ─▶ pinning ─▶ working ─▶ releasing
//       │                                      │  (k+1 < stages: acquiring again, on the same worker)
//       │                                      └──▶ done
//       └─ cancel / deadline ─▶ cancelled / failed(deadline_exceeded)
//   Any step of a running job may end it: a failed acquire or pin, work that throws, a cancel or the
//   deadline. Then everything the stage holds (pins, then leases, including grants that arrive later) is
//   released, the job ends with the typed error, and its worker takes the next job. A cancel or deadline
//   during an acquire or a pin withdraws that request from its tier (tagged by job id in RAM, by lease on
//   a device), which answers it at once: one waiting for room leaves the queue (FIFO, so a stopped job at
//   its head would otherwise hold up every request behind it until its own deadline); one waiting for a
//   load or copy leaves it to its other waiters (a load nobody waits for stops: Note [An abandoned load
//   stops]). A stop (cancel, deadline, shutdown) that
//   comes while a stage's work runs counts once that work returns: a stage whose work returned without
//   having been told of the stop (`stage_context::cancelled()` said true) finished, so a job whose last
//   stage did so is done; otherwise the job ends with the stop.
//
// Note [Prefetch]: with `scheduler_options::prefetch`, when a stage's work starts the scheduler asks the RAM
// tier to lease the models of the job's later stages, then those of the job that worker would take next
// (already during the job's earlier stages: a long middle stage, such as denoising, is when a copy can
// overlap most) without waiting and without evicting any model a running or queued job
// will use, then asks their device to copy them the same way, and lets both go at once. A copy for the
// next job must also leave the room the running job's later stages still need on that device (their
// models not yet there, and their working memory), or the next stage would evict it again. What arrived is
// ordinary cache that the next acquire and pin find resident, and what could not arrive is simply loaded
// when needed. After every change of the running and queued jobs it sends the tiers the models they will
// use, soonest first, so that eviction takes the others first.
//
// A stage leases its models together (`acquire_all`: never some while waiting for the others), pins each
// on the stage's device (the worker's GPU for `any_gpu`, the CPU tier for `cpu`), the first pin carrying
// the stage's working memory, and then runs the stage's work on the worker's thread, never an actor's.
// The scheduler actor is the holder of every lease and pin; it talks to the tiers with asynchronous
// requests (the actor path), so a stage costs no blocking round trips.

#include "runtime/core/scheduling/job_queue.hpp"
#include "runtime/session.hpp"

#include <c10/core/DeviceGuard.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace mcache {

class runtime;
class timeline;

/// What a stage's work sees: the pins and host copies of the stage's models, while the stage holds them.
class stage_context {
public:
  /// The pin of `model` (throws request_error invalid_argument if the stage has no such model).
  const pin_handle& pin(const model_id& model) const;
  /// The RAM copy of `model`.
  const host_model& host(const model_id& model) const;
  job_id job() const { return job_; }
  std::size_t stage() const { return stage_; }
  /// The device the stage's models are pinned on (cpu_device for a CPU stage).
  device_index device() const { return device_; }
  /// That device as LibTorch names it (cuda:N, privateuseone:N; the CPU for a simulated device and a CPU
  /// stage). While the stage works it is the current device of its thread, as `torch.cuda.device(N)`
  /// would make it: a tensor made without an index (`at::kCUDA`) lands there, beside the stage's pins,
  /// whichever GPU of the machine that is.
  c10::Device torch_device() const { return torch_device_; }
  /// The job was cancelled or passed its deadline: return early (what the stage holds is released after).
  /// Once this has said so, the stage does not count as finished when its work returns (Note [Job
  /// lifecycle]).
  bool cancelled() const {
    if (!cancelled_->load())
      return false;
    told_to_stop_.store(true);
    return true;
  }
  /// Whether `cancelled()` said so to the work: the work may have returned before finishing.
  bool told_to_stop() const { return told_to_stop_.load(); }

  // Built by the scheduler's worker.
  stage_context(job_id job, std::size_t stage, device_index device, c10::Device torch_device,
                std::vector<ram_lease> leases, std::vector<device_pin> pins,
                std::shared_ptr<const std::atomic<bool>> cancelled);
  /// Ends the stage's use of its pins (their streams are recorded for the device copy's reuse).
  ~stage_context();
  stage_context(const stage_context&) = delete;
  stage_context& operator=(const stage_context&) = delete;

private:
  job_id job_;
  std::size_t stage_;
  device_index device_;
  c10::Device torch_device_;
  c10::OptionalDeviceGuard current_;  // declared before the pins: they end their use with the device current
  std::vector<ram_lease> leases_;
  std::vector<pin_handle> pins_;
  std::shared_ptr<const std::atomic<bool>> cancelled_;
  mutable std::atomic<bool> told_to_stop_{false};  // the work may ask from threads of its own
};

struct job_status;

struct stage_spec {
  std::vector<model_id> models;                          // leased together, each pinned
  stage_target target = stage_target::any_gpu();         // where they are pinned
  bytes_t working_bytes = 0;                             // working memory on that device while the stage runs
  std::function<void(stage_context&)> work;              // runs on a worker thread with every model pinned
  std::string name;                                      // for the timeline (default "stage k")
};

struct job_spec {
  std::string name;  // for the timeline and errors
  std::vector<stage_spec> stages;
  int priority = 0;  // higher runs first
  /// From submit: a job not done by then fails with deadline_exceeded (queued or running). None: no limit.
  std::optional<std::chrono::nanoseconds> deadline;
  /// Called once when the job ends (done, failed or cancelled), with its final status, on whichever
  /// thread ended it (a worker or the scheduler actor's): it must neither block nor throw (an exception is
  /// logged and dropped: the scheduler goes on). Not called if submit throws.
  std::function<void(const job_status&)> on_end;
};

enum class job_state { queued, running, done, failed, cancelled };
const char* to_string(job_state state);

struct job_status {
  job_state state = job_state::queued;
  std::size_t stage = 0;          // while running: the stage; once ended: how many stages finished
  device_index device = 0;        // while running or after: the worker's device
  std::optional<failure> error;   // failed or cancelled: why
  std::size_t passed_over = 0;    // times warm_first ran a later job before this one
  bool ended() const { return state == job_state::done || state == job_state::failed || state == job_state::cancelled; }
};

namespace detail {
struct job_shared;
}

/// A submitted job. Copyable; every copy sees the same job. An empty handle (default-made) has no job:
/// its `status`, `wait` and `wait_for` throw `request_error` (invalid_argument), and `cancel` does nothing.
class job_handle {
public:
  job_handle() = default;
  job_id id() const;
  job_status status() const;
  /// Blocks until the job ends; its final status.
  job_status wait() const;
  /// Its final status, or nothing if it has not ended within `timeout`.
  std::optional<job_status> wait_for(std::chrono::nanoseconds timeout) const;
  /// Asks the job to stop: a queued job ends at once; a running one that waits (for room, a load or a
  /// copy) is withdrawn from that wait and ends at once, one whose work runs ends when the work returns (the work can read
  /// `cancelled()`; if it never saw it say true and that was the last stage, the job is done). What it
  /// holds is released. No-op on an ended job.
  void cancel();

private:
  friend class scheduler;
  std::shared_ptr<detail::job_shared> shared_;
};

struct scheduler_options {
  order_options order;                 // fifo (default) or warm_first, with its window and bound
  std::size_t workers_per_device = 1;  // threads running stages per GPU
  std::size_t cpu_workers = 1;         // threads running jobs that use no GPU
  /// How long each acquire and pin waits for room before the job fails with budget_exhausted (a century
  /// or more: for ever). A waiting job holds its worker; a cancel withdraws the wait at once.
  std::chrono::nanoseconds wait_for_room = std::chrono::seconds(60);
  /// Check the queue's order after every step; unset: as the runtime does (`runtime_options::check_invariants`,
  /// off in release builds), so a production scheduler does not pay O(queue) per event.
  std::optional<bool> check_invariants;
  /// Note [Prefetch]: while a stage runs, bring the next stage's models (or the next queued job's) into
  /// RAM and onto its device early, and tell the tiers which models are needed next (Note [Eviction with
  /// known next uses]). Never evicts a model with a known next use, never waits, never fails a job.
  bool prefetch = false;
};

class scheduler {
public:
  /// Spawns the scheduler actor and its workers over `rt`'s devices. Throws request_error
  /// (invalid_argument) on unusable options.
  scheduler(runtime& rt, scheduler_options options = {});
  /// Cancels queued jobs and waits for running ones to end, and for the tiers to take back every lease
  /// and pin the scheduler held: stats read after it count none of them.
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  /// Queues a job. Throws request_error for a bad plan, and nothing is queued: invalid_argument (no
  /// stages, a stage without work, a negative deadline), unknown_model, invalid_device, model_too_large
  /// (a stage's models exceed the RAM budget, or its working memory every device it may run on).
  job_handle submit(job_spec job);

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace mcache
