#include "runtime/core/scheduling/job_queue.hpp"

#include <algorithm>
#include <stdexcept>

namespace mcache {

bool stage_target::allows(device_index worker_device) const {
  switch (where) {
    case kind::device: return worker_device == device;
    case kind::any_gpu: return worker_device != cpu_device;
    case kind::cpu: return worker_device == cpu_device;
  }
  return false;
}

void job_queue::push(queued_job job) {
  job.arrival = arrivals_++;
  auto at = std::find_if(jobs_.begin(), jobs_.end(), [&](const queued_job& q) { return q.priority < job.priority; });
  jobs_.insert(at, std::move(job));
}

bool job_queue::remove(job_id id) {
  auto i = std::find_if(jobs_.begin(), jobs_.end(), [&](const queued_job& q) { return q.id == id; });
  if (i == jobs_.end())
    return false;
  jobs_.erase(i);
  return true;
}

bool job_queue::contains(job_id id) const {
  return std::any_of(jobs_.begin(), jobs_.end(), [&](const queued_job& q) { return q.id == id; });
}

bool job_queue::has_work_for(device_index device) const {
  return std::any_of(jobs_.begin(), jobs_.end(), [&](const queued_job& q) { return q.runs_on(device); });
}

double job_queue::cost(const queued_job& job, device_index device, const residency_view& where,
                       const order_options& options) {
  const std::map<model_id, bytes_t>* resident = nullptr;
  if (auto d = where.on_device.find(device); d != where.on_device.end())
    resident = &d->second;
  double cost = 0;
  for (const auto& [model, bytes] : job.models) {
    bytes_t on_device = 0;
    if (resident)
      if (auto r = resident->find(model); r != resident->end())
        on_device = std::min(r->second, bytes);
    if (device != cpu_device)
      cost += static_cast<double>(bytes - on_device);
    if (on_device < bytes && !where.in_ram.count(model))
      cost += options.disk_cost * static_cast<double>(bytes);
  }
  for (const auto& [model, bytes] : job.loaded_only)
    if (!where.in_ram.count(model))
      cost += options.disk_cost * static_cast<double>(bytes);
  return cost;
}

std::optional<std::pair<std::vector<size_t>, size_t>> job_queue::choose(device_index device,
                                                                       const residency_view& where,
                                                                       const order_options& options) const {
  std::vector<size_t> eligible;  // positions in jobs_, in order
  for (size_t i = 0; i < jobs_.size(); ++i)
    if (jobs_[i].runs_on(device))
      eligible.push_back(i);
  if (eligible.empty())
    return std::nullopt;
  size_t chosen = 0;  // index into eligible
  if (options.order == order_options::policy::warm_first) {
    auto window = std::min(eligible.size(), std::max<size_t>(options.window, 1));
    std::optional<size_t> overdue;
    for (size_t k = 0; k < window && !overdue; ++k)
      if (jobs_[eligible[k]].passed_over >= options.max_passes)
        overdue = k;
    if (overdue) {
      chosen = *overdue;
    } else {
      double best = 0;
      for (size_t k = 0; k < window; ++k) {
        auto c = cost(jobs_[eligible[k]], device, where, options);
        if (k == 0 || c < best) {
          best = c;
          chosen = k;
        }
      }
    }
  }
  return std::make_pair(std::move(eligible), chosen);
}

const queued_job* job_queue::peek(device_index device, const residency_view& where, const order_options& options) const {
  auto c = choose(device, where, options);
  return c ? &jobs_[c->first[c->second]] : nullptr;
}

std::optional<queued_job> job_queue::pick(device_index device, const residency_view& where,
                                          const order_options& options) {
  auto c = choose(device, where, options);
  if (!c)
    return std::nullopt;
  const auto& [eligible, chosen] = *c;
  for (size_t k = 0; k < chosen; ++k)
    ++jobs_[eligible[k]].passed_over;
  auto job = std::move(jobs_[eligible[chosen]]);
  jobs_.erase(jobs_.begin() + static_cast<std::ptrdiff_t>(eligible[chosen]));
  return job;
}

std::vector<queued_job> job_queue::take_expired(std::chrono::steady_clock::time_point now) {
  std::vector<queued_job> expired;
  auto keep = std::stable_partition(jobs_.begin(), jobs_.end(), [&](const queued_job& q) { return q.deadline > now; });
  std::move(keep, jobs_.end(), std::back_inserter(expired));
  jobs_.erase(keep, jobs_.end());
  return expired;
}

std::optional<std::chrono::steady_clock::time_point> job_queue::next_deadline() const {
  std::optional<std::chrono::steady_clock::time_point> next;
  for (const auto& q : jobs_)
    if (q.deadline != std::chrono::steady_clock::time_point::max() && (!next || q.deadline < *next))
      next = q.deadline;
  return next;
}

void job_queue::check_invariants(const order_options& options) const {
  for (size_t i = 0; i + 1 < jobs_.size(); ++i) {
    const auto& a = jobs_[i];
    const auto& b = jobs_[i + 1];
    if (a.priority < b.priority || (a.priority == b.priority && a.arrival > b.arrival))
      throw std::logic_error("job queue invariant: job " + std::to_string(b.id) + " is behind job "
                             + std::to_string(a.id) + " out of order");
  }
  if (options.order == order_options::policy::warm_first)
    for (const auto& q : jobs_)
      if (q.passed_over > options.max_passes)
        throw std::logic_error("job queue invariant: job " + std::to_string(q.id) + " was passed over "
                               + std::to_string(q.passed_over) + " times, more than K = "
                               + std::to_string(options.max_passes));
}

} // namespace mcache
