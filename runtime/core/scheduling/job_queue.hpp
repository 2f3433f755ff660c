#pragma once
// The scheduler's queue and its order, CAF-free: the scheduler actor owns one and is its only caller.
//
// Note [Scheduling order]: when a worker of a device is free, `pick` chooses the job it runs next.
//   - Only jobs whose first stage may run there are eligible: a stage targets one device, any GPU, or the
//     CPU (the CPU tier's worker). A job whose stages for any GPU could never fit on a device (their
//     models whole where it loads no model in part, plus their working memory) is not eligible there:
//     `submit` lists those devices (`unfit_devices`), and refuses a job that fits on none.
//   - Higher priority goes first; within a priority, arrival order.
//   - `fifo` takes the first eligible job.
//   - `warm_first` looks at the first W eligible jobs and takes the one whose stages would move the fewest
//     bytes to this device: bytes already resident there cost nothing, bytes in RAM cost one copy, bytes
//     on disk cost a load (`disk_cost` times a copy) plus the copy. Models of its CPU stages are pinned in
//     place, never copied: they cost only their load, if on disk. Ties go to the earlier job.
//   - Bounded unfairness: every eligible job ahead of the one taken, within the window, has been passed
//     over once more. A job passed over K times is taken next (the earliest such job in the window), so no
//     job is passed over more than K times: the jobs ahead of the one taken were passed over fewer than K
//     times, and jobs outside the window are not passed over (they wait their turn, as in FIFO).
// Deadlines are the scheduler's: a job past its deadline is taken out with `take_expired`.

#include "messages/ids.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace mcache {

using job_id = std::uint64_t;

/// Where a stage's models are pinned.
struct stage_target {
  enum class kind { device, any_gpu, cpu };
  kind where = kind::any_gpu;
  device_index device = 0;  // for kind::device

  static stage_target on(device_index d) { return {kind::device, d}; }
  static stage_target any_gpu() { return {kind::any_gpu, 0}; }
  static stage_target cpu() { return {kind::cpu, cpu_device}; }
  /// Whether a worker of `worker_device` (cpu_device for the CPU) may run the stage.
  bool allows(device_index worker_device) const;
};

/// What the order knows of a queued job.
struct queued_job {
  job_id id = 0;
  int priority = 0;  // higher first
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  stage_target target;                               // of the stage it starts with
  std::set<device_index> unfit_devices;              // where its stages could never fit: not run there
  std::vector<std::pair<model_id, bytes_t>> models;  // of its GPU stages, with their bytes
  std::vector<std::pair<model_id, bytes_t>> loaded_only;  // of its CPU stages: a load, never a copy
  std::uint64_t arrival = 0;                         // set by push
  std::size_t passed_over = 0;

  /// Whether a free worker of `worker_device` may take it (Note [Scheduling order]).
  bool runs_on(device_index worker_device) const {
    return target.allows(worker_device) && !unfit_devices.count(worker_device);
  }
};

/// Where models are, as the scheduler last saw it.
struct residency_view {
  std::set<model_id> in_ram;
  std::map<device_index, std::map<model_id, bytes_t>> on_device;  // device bytes resident
};

struct order_options {
  enum class policy { fifo, warm_first };
  policy order = policy::fifo;
  std::size_t window = 16;     // W: how many eligible jobs warm_first compares
  std::size_t max_passes = 8;  // K: how often a job may be passed over
  double disk_cost = 8.0;      // a byte loaded from disk costs this many bytes copied to a device (NVMe at
                               // 3 GB/s against 25 GB/s for a copy)
};

class job_queue {
public:
  void push(queued_job job);
  /// Takes a queued job out (a cancel). False if it is not queued.
  bool remove(job_id id);
  /// The job a free worker of `device` runs next (Note [Scheduling order]), taken out of the queue.
  std::optional<queued_job> pick(device_index device, const residency_view& where, const order_options& options);
  /// The job `pick` would take now, left in the queue (what a prefetch prepares for).
  const queued_job* peek(device_index device, const residency_view& where, const order_options& options) const;
  /// Jobs whose deadline is at or before `now`, taken out of the queue.
  std::vector<queued_job> take_expired(std::chrono::steady_clock::time_point now);
  /// The cost warm_first weighs: bytes the job's first stage would move to `device`.
  static double cost(const queued_job& job, device_index device, const residency_view& where,
                     const order_options& options);

  bool empty() const { return jobs_.empty(); }
  std::size_t size() const { return jobs_.size(); }
  bool contains(job_id id) const;
  /// Whether a worker of `device` has something to run.
  bool has_work_for(device_index device) const;
  /// The queue in order (first runs first, all else equal).
  const std::vector<queued_job>& jobs() const { return jobs_; }
  /// The earliest deadline of a queued job, if any has one.
  std::optional<std::chrono::steady_clock::time_point> next_deadline() const;
  /// Throws std::logic_error naming the first broken invariant.
  void check_invariants(const order_options& options) const;

private:
  /// The positions in jobs_ of the eligible jobs, in order, and which of them pick takes (an index into
  /// them); nullopt when none is eligible.
  std::optional<std::pair<std::vector<size_t>, size_t>> choose(device_index device, const residency_view& where,
                                                               const order_options& options) const;
  std::vector<queued_job> jobs_;  // by priority (higher first), then arrival
  std::uint64_t arrivals_ = 0;
};

} // namespace mcache
