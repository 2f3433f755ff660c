#pragma once
// The embedding API: a `runtime` boots the actor system, spawns the RAM-cache actor and one device actor
// per device (plus one for CPU pins), and opens sessions.
//
//   mcache::runtime rt{options};
//   rt.models().add(mcache::synthetic_model("vae", {1 << 20}));
//   auto s = rt.open_session();
//   auto lease = s.acquire("vae");             // stays in RAM until released
//   auto pin = s.pin(lease, 0, 64 << 20);      // resident on device 0 with 64 MiB working memory
//   use(pin.tensor("t0"));                     // both end when they go out of scope
//
// Actor sessions talk to `ram_cache()` and `device(i)` with request/then; see README.md.

#include "messages/interfaces.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/timeline.hpp"
#include "runtime/core/transfer/executor.hpp"
#include "runtime/options.hpp"
#include "runtime/session.hpp"

#include <c10/core/Device.h>

#include <atomic>
#include <map>
#include <string>
#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

namespace caf {
class actor_system;
class actor_system_config;
} // namespace caf

namespace mcache {

class device_backend;

/// What `empty_cache` freed and what it kept, with why.
struct empty_cache_report {
  bytes_t ram_freed_bytes = 0;
  std::vector<bytes_t> device_freed_bytes;  // index i is device i
  std::vector<std::string> kept;            // "RAM: 'unet' (1.7 GiB) is leased by 'worker-3' for 12.0 s", ...
};

struct runtime_stats {
  ram_stats ram;
  std::vector<device_stats> devices;  // index i is device i
  device_stats cpu;                   // the CPU pin tier
};

class runtime {
public:
  /// Boots the runtime. Throws `request_error` (invalid_argument) on unusable options.
  explicit runtime(runtime_options options);
  /// Shuts down (see `shutdown`) and stops the actors. Sessions must be gone by then.
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// The catalog: register and look up models here. Remove or replace one through `remove_model` and
  /// `replace_model` (Note [Remove and replace]): they also tell the tiers, which drop the old copy once
  /// nothing holds it; `models().remove` alone leaves that copy cached, unreachable, until evicted.
  catalog& models() { return *catalog_; }
  const runtime_options& options() const { return options_; }
  size_t device_count() const { return devices_.size(); }

  ram_cache_actor ram_cache() const { return ram_; }
  /// The device actor of `index` (`cpu_device` for CPU pins). Throws `request_error` (invalid_device).
  device_actor device(device_index index) const;

  /// The LibTorch device that device `index`'s copies live on (cuda:N, privateuseone:N; the CPU for a
  /// simulated device and for `cpu_device`): where a stage's own tensors go. Throws `request_error`
  /// (invalid_device).
  c10::Device torch_device(device_index index) const;
  /// What a device copy of a tensor of `tensor_bytes` bytes costs device `index`'s budget: a GPU
  /// allocator's blocks are rounded up, and CPU pins (`cpu_device`) alias the RAM copy and cost nothing.
  /// Throws `request_error` (invalid_device).
  bytes_t device_footprint(device_index index, bytes_t tensor_bytes) const;

  /// The placement policy of `session::pin_anywhere`.
  const placement_policy& placement() const { return *placement_; }

  /// A blocking client. One per thread; it must not outlive the runtime. `name` is how errors, logs and
  /// the status page call it ("session N" when empty).
  session open_session(std::string name = {});
  /// Names a holder (an actor holding leases or pins: a session, a scheduler, an actor session) for the
  /// status page and errors. Thread-safe.
  void name_holder(std::uint64_t actor_id, std::string name);
  /// The holder's name, or "actor <id>" if it has none.
  std::string holder_name(std::uint64_t actor_id) const;
  /// Note [Remove and replace] (catalog.hpp): `id` stops meaning a model. New acquires fail with
  /// `unknown_model`; copies held now stay valid and counted until released, then go. Throws
  /// `request_error` (unknown_model).
  void remove_model(const model_id& id);
  /// `descriptor.id` means `descriptor` from now on (a new file, or a file changed on disk registered
  /// again). New acquires get the new model; copies of the old one held now stay valid and counted until
  /// released, then go. Throws `request_error` (unknown_model, invalid_argument).
  void replace_model(model_descriptor descriptor);
  /// Drops everything unheld from every tier: unpinned device copies, then unleased RAM copies (blocking).
  /// What is held (leased, pinned, still loading or copying) stays, and the report says which and why.
  empty_cache_report empty_cache();
  /// Every tier's stats and models with their holders, as JSON (blocking; what `/status` serves).
  std::string status_json();
  /// A snapshot of every tier (blocking).
  runtime_stats stats();
  /// Every tier's models with their holders.
  struct tier_reports {
    tier_report ram;
    std::vector<tier_report> devices;  // index i is device i
    tier_report cpu;
  };
  /// What every tier holds now, model by model (blocking): what `status_json` and a fleet node's summary
  /// are made of.
  tier_reports holdings();

  /// Stops taking work, within a bounded time: every request still waiting (for room, a load or a copy)
  /// is answered `shutting_down`, and so is every later acquire or pin; loads and copies not started are
  /// dropped, and those running get `grace` to return before they are abandoned. Safe to call while
  /// sessions wait or hold handles: their later releases still end what they held. Idempotent; the
  /// destructor calls it.
  /// Returns false if some load or copy was still running after `grace` and was abandoned. Stats read
  /// after a shutdown may still count loads and copies that were dropped as in flight.
  bool shutdown(std::chrono::nanoseconds grace = std::chrono::seconds(5));
  bool stopped() const { return stopped_.load(); }
  /// Note [Timeline]: the runtime's timeline, or null when `trace_path` is empty. Written to `trace_path`
  /// at shutdown.
  std::shared_ptr<timeline> trace() const { return trace_; }
  caf::actor_system& system() { return *system_; }

private:
  /// Tells every tier that a generation left the catalog (Note [Remove and replace]), or throws.
  void retire(const outcome<model_id>& retired);
  tier_reports reports(caf::scoped_actor& self);
  runtime_stats stats(caf::scoped_actor& self);

  runtime_options options_;
  std::shared_ptr<catalog> catalog_;
  std::unique_ptr<placement_policy> placement_;
  std::shared_ptr<executor> loaders_;
  std::vector<std::shared_ptr<executor>> copiers_;  // one copy queue per device, the CPU tier's last
  std::unique_ptr<caf::actor_system_config> config_;
  std::unique_ptr<caf::actor_system> system_;
  ram_cache_actor ram_;
  std::vector<device_actor> devices_;
  std::vector<std::shared_ptr<const device_backend>> backends_;  // index i is device i's (its LibTorch device)
  device_actor cpu_;
  std::shared_ptr<timeline> trace_;
  mutable std::mutex names_mutex_;
  std::map<std::uint64_t, std::string> holder_names_;
  std::atomic<std::uint64_t> sessions_opened_{0};
  std::atomic<bool> stopped_{false};
  std::mutex shutdown_mutex_;   // one shutdown at a time; guards shutdown_clean_
  bool shutdown_clean_ = true;
};

/// Makes the actor system config the runtime uses (types, error category, scheduler); for callers that
/// spawn the actors themselves (tests).
void configure(caf::actor_system_config& cfg, const runtime_options& options);

} // namespace mcache
