#pragma once
// One device's tier: a byte budget minus a working-memory reserve, the models resident on the device,
// pins with their per-pin working memory, shared copies and a FIFO of pin requests waiting for room.
// CAF-free and single-threaded: the device actor owns one and is its only caller.
//
// Residency of a model on a device (one home for the state machine; `transition()` rejects other moves):
//
//     absent ──admit──▶ copying ──copy ok──▶ resident ──evict / offload──▶ absent
//                          │
//                          └──copy failed──▶ absent
//
//   absent:   nothing on the device.
//   copying:  its device bytes are reserved and a copy runs on a copy thread; pins join it (one copy).
//   resident: its device copy is complete. With pins it is locked; without, it is an eviction candidate
//             (lazy offload: a released model stays as cache until room is needed).
//
// The RAM copy is kept while a model is on a device, so dropping the device copy costs no copy back.
// Every pin carries its own RAM lease (taken by the device actor from the RAM tier), which this tier hands
// back through `device_effects::ram_leases_to_release` when the pin, or the request, ends.
// Granularity is the whole model for now: partial residency and per-tensor offload come with the
// transfer work; `offload(model, bytes)` frees the whole model, which is at least `bytes`.

#include "messages/stats.hpp"
#include "runtime/core/eviction_policy.hpp"
#include "runtime/core/host_model.hpp"
#include "runtime/core/outcome.hpp"
#include "runtime/core/ram_tier.hpp"

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

namespace mcache {

struct device_tier_options {
  device_index device = 0;
  bytes_t budget_bytes = 0;   // device memory this tier may use, in bytes; must be > 0
  bytes_t reserve_bytes = 0;  // of the budget, kept free for work outside pins, in bytes; < budget
};

/// A pin request as the device actor hands it to the tier, after borrowing a RAM lease for it.
struct pin_request {
  request_id request = 0;
  holder_id holder = 0;
  ram_lease host;              // the pin's own lease on the host copy
  bytes_t device_bytes = 0;    // what a device copy of the model costs this device
  bytes_t working_bytes = 0;   // working memory the caller needs on the device while pinned
};

/// A granted pin: the model is resident and locked until the pin is released.
struct device_pin {
  pin_id pin = 0;
  model_id model;
  device_index device = 0;
  bytes_t resident_bytes = 0;  // device bytes of the model copy
  bytes_t working_bytes = 0;   // working memory reserved for this pin
  std::shared_ptr<const device_model> view;  // the tensors to compute with
  std::shared_ptr<const host_model> host;    // the host copy (opaque payload, and streaming later)
};

struct copy_order {
  model_id model;
  std::shared_ptr<const host_model> host;
};

/// What a step of the tier asks its actor to do.
struct device_effects {
  std::vector<reply<device_pin>> replies;       // answer these requests
  std::vector<copy_order> copies;               // start these copies off the actor thread
  std::vector<lease_id> ram_leases_to_release;  // hand these RAM leases back to the RAM tier
};

enum class device_residency { absent, copying, resident };
const char* to_string(device_residency state);

class device_tier {
public:
  device_tier(device_tier_options options, std::unique_ptr<eviction_policy> policy);

  static std::optional<failure> validate(const device_tier_options& options);

  /// Asks for a pin. Answers at once (hit, too large, no room and `may_wait` false), or joins/starts a
  /// copy, or queues FIFO for room.
  void pin(pin_request request, bool may_wait, device_effects& out);
  /// A copy started by this tier finished.
  void copy_finished(const model_id& model, outcome<std::shared_ptr<const device_model>> copy,
                     uint64_t copy_ns, device_effects& out);
  /// Ends a pin. Fails (state unchanged) on an unknown pin or another holder's pin.
  std::optional<failure> release(pin_id pin, holder_id holder, device_effects& out);
  /// Drops unpinned resident models: `model` alone (empty: any, in policy order) until at least `bytes`
  /// are freed (0: all it can). Returns the bytes freed.
  outcome<bytes_t> offload(const model_id& model, bytes_t bytes, device_effects& out);
  void holder_down(holder_id holder, device_effects& out);
  /// A request's deadline for room passed: if it is still queued it fails with `budget_exhausted` and its
  /// RAM lease is handed back. An admitted request (copy in flight) is served when the copy ends.
  void expire(request_id request, device_effects& out);

  device_residency residency(const model_id& model) const;
  size_t pins_of(holder_id holder) const;
  device_stats stats() const;
  void check_invariants() const;

private:
  struct admitted {
    request_id request;
    holder_id holder;
    ram_lease host;
    bytes_t working_bytes;
  };
  struct entry {
    device_residency state = device_residency::absent;
    bytes_t bytes = 0;  // device bytes
    size_t pins = 0;
    std::shared_ptr<const device_model> view;
    std::vector<admitted> waiters;           // pins waiting for the copy in flight
    std::vector<lease_id> orphaned_leases;   // leases of waiters whose holder died mid-copy: the copy
                                             // still reads the host copy, so they are returned when it ends
  };
  struct pin_record {
    model_id model;
    holder_id holder;
    bytes_t working_bytes;
    lease_id ram_lease;
  };

  void transition(const model_id& model, device_residency to);
  void update_candidacy(const model_id& model);
  bool try_admit(const pin_request& r, device_effects& out);
  device_pin grant(const model_id& model, const admitted& a);
  void serve_queue(device_effects& out);
  void drop(const model_id& model);
  void fail_request(const admitted& a, failure why, device_effects& out);
  failure no_room(const pin_request& r) const;
  bytes_t usable_bytes() const { return options_.budget_bytes - options_.reserve_bytes; }
  bytes_t free_bytes() const { return usable_bytes() - used_; }

  device_tier_options options_;
  std::unique_ptr<eviction_policy> policy_;
  std::map<model_id, entry> entries_;
  std::unordered_map<pin_id, pin_record> pins_;
  std::unordered_map<holder_id, std::set<pin_id>> by_holder_;
  std::deque<pin_request> queue_;
  pin_id next_pin_ = 1;
  bytes_t used_ = 0;              // entry bytes + working_reserved_
  bytes_t working_reserved_ = 0;  // working memory of pins and of admitted requests
  device_stats counters_;
};

} // namespace mcache
