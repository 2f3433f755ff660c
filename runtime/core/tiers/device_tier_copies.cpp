// The end of a copy to a device: success, failure, and the device out-of-memory ladder (see the state
// machine and the ladder in device_tier.hpp).

#include "runtime/core/tiers/device_tier.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/admission/make_room.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace mcache {

// Gives back the reservation of every tensor still marked as being copied.
void device_tier::drop_copying(entry& e) {
  for (auto& t : e.tensors)
    if (t.state == tensor_residency::copying) {
      t.state = tensor_residency::absent;
      e.bytes -= t.bytes;
      used_ -= t.bytes;
    }
}

void device_tier::copy_finished(const model_id& model, outcome<std::shared_ptr<const device_model>> copy,
                                uint64_t copy_ns, device_effects& out) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != device_residency::copying)
    throw std::logic_error("device tier: copy finished for '" + model + "', which is not copying");
  auto& e = i->second;
  std::vector<size_t> copied;
  bytes_t copied_bytes = 0;
  for (size_t k = 0; k < e.tensors.size(); ++k)
    if (e.tensors[k].state == tensor_residency::copying) {
      copied.push_back(k);
      copied_bytes += e.tensors[k].bytes;
    }
  if (succeeded(copy) && std::get<0>(copy)->tensors.size() != copied.size())
    copy = failure{errc::copy_failed, "the backend returned " + std::to_string(std::get<0>(copy)->tensors.size())
                                        + " tensors for a copy of " + std::to_string(copied.size())};
  // Rung 2 exists only with partial loading; `oom_retries` counts the copies that are really posted again.
  int rungs = options_.partial_loading ? 2 : 1;
  if (!succeeded(copy) && std::get<failure>(copy).code == errc::device_oom && e.oom_attempts < rungs) {
    ++e.oom_attempts;
    if (e.oom_attempts == 1) {
      // Rung 1: free every unpinned model (the allocator's view of free memory is not ours), retry.
      drop_candidates(0, *policy_, [this](const model_id& m, bytes_t wanted) {
        auto freed = trim(m, wanted);
        ++counters_.evictions;
        counters_.evicted_bytes += freed;
        return freed;
      });
      ++counters_.oom_retries;
      out.copies.push_back({model, e.host, copied});
      return;
    }
    if (options_.partial_loading) {
      // Rung 2: copy the required tensors only and stream the rest, if the waiters' staging fits.
      std::vector<size_t> keep;
      for (auto k : copied)
        if (e.tensors[k].required)
          keep.push_back(k);
      for (auto k : copied)
        if (!e.tensors[k].required) {
          e.tensors[k].state = tensor_residency::absent;
          e.bytes -= e.tensors[k].bytes;
          used_ -= e.tensors[k].bytes;
        }
      auto staging = staging_for(e, {});
      bytes_t extra = 0;
      for (const auto& w : e.waiters)
        extra += staging > w.staging_bytes ? staging - w.staging_bytes : 0;
      if (extra <= free_bytes()) {
        for (auto& w : e.waiters)
          if (staging > w.staging_bytes) {
            auto delta = staging - w.staging_bytes;
            w.staging_bytes = staging;
            w.working_bytes += delta;
            working_reserved_ += delta;
            used_ += delta;
          }
        ++counters_.partial_loads;
        if (!keep.empty()) {
          ++counters_.oom_retries;
          out.copies.push_back({model, e.host, keep});
          return;
        }
        copy = std::make_shared<const device_model>();  // nothing left to copy: all of it streams
        copied.clear();
        copied_bytes = 0;
      } else {
        copy = failure{errc::device_oom, std::get<failure>(copy).detail};
      }
    }
  }
  for (auto lease : e.orphaned_leases)
    out.ram_leases_to_release.push_back(lease);
  e.orphaned_leases.clear();
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  auto source = std::move(e.host);
  e.host.reset();
  e.oom_attempts = 0;
  if (!succeeded(copy)) {
    ++counters_.copy_failures;
    auto why = std::get<failure>(copy);
    if (why.code == errc::device_oom)
      why.detail = "device " + std::to_string(options_.device) + " ran out of memory copying '" + model + "' ("
                   + format_bytes(copied_bytes) + ") after freeing every unpinned model"
                   + (options_.partial_loading ? " and falling back to its required tensors" : "") + "; used "
                   + format_bytes(used_) + " of " + format_bytes(usable_bytes())
                   + " usable. The device has less memory than the budget says: lower budget_bytes. ("
                   + why.detail + ")";
    drop_copying(e);
    bool keeps_some = e.bytes > 0 || e.kept > 0;  // a kept entry stays until unkept, if with nothing
    transition(model, keeps_some ? device_residency::resident : device_residency::absent);
    for (const auto& w : waiters)
      fail_request(w, why, out);
  } else {
    const auto& got = *std::get<0>(copy);
    auto v = std::const_pointer_cast<device_model>(with_tensors(e.view, e.tensors.size(), source.get()));
    for (size_t k = 0; k < copied.size(); ++k) {
      v->tensors[copied[k]] = got.tensors[k];
      e.tensors[copied[k]].state = tensor_residency::resident;
    }
    v->device_bytes = e.bytes;
    e.view = v;
    counters_.bytes_copied_in += copied_bytes;
    counters_.copy_ns += copy_ns;
    counters_.last_copy_bytes = copied_bytes;
    counters_.last_copy_ns = copy_ns;
    transition(model, device_residency::resident);
    for (const auto& w : waiters)
      out.replies.push_back({w.request, grant(model, w)});
    settle(model);  // if every waiter went away and nothing is resident, it goes
  }
  serve_queue(out);
}

} // namespace mcache
