#pragma once
// The catalog: which models exist, how big they are, and how to load them. Looking a model up never loads
// it; loading happens when the RAM tier admits an acquire.

#include "messages/errc.hpp"
#include "messages/ids.hpp"
#include "runtime/core/models/host_model.hpp"
#include "runtime/core/outcome.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <vector>

namespace mcache {

struct model_descriptor;

/// Produces a model's host copy. Runs on a loader thread, never on an actor thread; may throw (the text is
/// kept in a `load_failed` error).
using model_loader = std::function<std::shared_ptr<const host_model>(const model_descriptor&)>;

/// Thrown by a loader to fail with a specific code (a loader's other exceptions become `load_failed`).
class load_error : public std::runtime_error {
public:
  load_error(errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
  errc code() const noexcept { return code_; }

private:
  errc code_;
};

// Note [An abandoned load stops]: a load runs for the acquires waiting for it (and joins); when the last
// of them is withdrawn (a cancelled job, a Ctrl-C) or its holder goes away, nobody wants the bytes any
// more, and reading gigabytes into RAM nobody asked for costs the disk, the RAM budget (its bytes stay
// reserved while it runs) and the requests queued behind it. So the RAM-cache actor raises a flag the
// load can read, and lowers it again if an acquire joins the load, or a request queued for room needs
// it, before it stops. A loader that reads in steps asks `load_abandoned()` between them (the
// safetensors reader does, per chunk and file in read mode; an mmap load is one call and runs to its
// end) and stops by throwing `load_stopped` (`stop_if_abandoned()` does both); its buffers go back as it
// unwinds. The flag is the loader thread's: threads a loader starts of its own see `false`. The tier
// then forgets the load and frees its bytes, or, if an acquire joined it after all (the flag and the
// stop crossed), starts it again. A loader that never asks runs to its end and its model lands unleased,
// cached like any other. Only a load is stopped: a copy back from a device, or a copy to a device, is
// short next to a disk read and goes on.

/// Thrown by a loader that stopped because nobody waits for its load (see `stop_if_abandoned`).
class load_stopped : public std::exception {
public:
  const char* what() const noexcept override { return "the load was stopped: nobody waits for it"; }
};

/// On a loader thread, while a load runs: true once nobody waits for it any more. False elsewhere.
bool load_abandoned();
/// Throws `load_stopped` if `load_abandoned()`.
void stop_if_abandoned();

namespace detail {
/// Makes `abandoned` the flag `load_abandoned()` reads on this thread for the scope's lifetime.
class load_scope {
public:
  explicit load_scope(const std::atomic<bool>* abandoned);
  ~load_scope();
  load_scope(const load_scope&) = delete;
  load_scope& operator=(const load_scope&) = delete;

private:
  const std::atomic<bool>* previous_;
};
} // namespace detail

struct model_descriptor {
  model_id id;
  bytes_t bytes = 0;            // exact RAM size of the loaded model (tensors + opaque payload); the loader
                                // must produce exactly this many bytes or the load fails
  std::string source;           // where it comes from, for messages ("synthetic", a file path, ...)
  model_loader loader;
  std::vector<std::string> tensor_names;     // in execution order when known (else declaration order)
  /// Each tensor's bytes, beside `tensor_names`, where registration knows them (files, synthetic models):
  /// the scheduler and placement see from them the least a partial pin needs before anything loads.
  std::vector<bytes_t> tensor_bytes;
  std::vector<std::string> required_tensors; // always resident when pinned (norms, embeddings)
  std::optional<device_index> preferred_device;  // a placement hint from the manifest
  /// Note [Keep-alive]: unused (unheld) this long, the model is dropped from RAM and from every device.
  /// None: the runtime's default (`runtime_options::keep_alive`); zero: kept until room is needed.
  std::optional<std::chrono::nanoseconds> keep_alive;
  /// Optional, cheap validation run on a loader thread before room is made for a load (for files: their
  /// size and mtime are unchanged), so that a load bound to fail evicts nothing.
  std::function<std::optional<failure>(const model_descriptor&)> precheck;
};

/// Descriptors are shared, never copied on the hot path: a file model's loader holds every tensor's layout.
using descriptor_ptr = std::shared_ptr<const model_descriptor>;

/// Note [Remove and replace]: an id may stop meaning a model (`remove`) or start meaning another one
/// (`replace`: a new file, a changed file registered again) while copies of the old one are held. Holders
/// keep what they hold, valid and counted in every tier's budget, until they release it; new acquires get
/// the new model (or `unknown_model`). So that the tiers never confuse the two, each registration of an id
/// is a generation with an id of its own, the one the tiers, leases and pins use: the first is the id
/// itself, later ones are "id#2", "id#3", ... ('#' is therefore not allowed in ids). `remove` and
/// `replace` return the id of the generation they retire; the runtime tells every tier, which drops that
/// generation's copies as soon as nothing holds them (ram_tier::retire, device_tier::retire).
///
/// The id a generation was registered under: "unet" for "unet#3" and for "unet" itself. Callers name
/// models by that id; leases and pins carry the generation's.
inline model_id registered_name(const model_id& generation) { return generation.substr(0, generation.find('#')); }

/// A thread-safe registry of model descriptors.
class catalog {
public:
  /// Registers a model. Fails with `invalid_argument` on an empty id, an id with '#', zero bytes, no
  /// loader, or an id that is already registered (the catalog stays as it was).
  std::optional<failure> add(model_descriptor descriptor);
  /// Makes the registered id `descriptor.id` mean `descriptor` from now on. Returns the id of the
  /// generation it retires. Fails (catalog unchanged) as `add` does, or with `unknown_model`.
  outcome<model_id> replace(model_descriptor descriptor);
  /// Unregisters `id`. Returns the id of the generation it retires; `unknown_model` if none.
  outcome<model_id> remove(const model_id& id);
  /// The current descriptor of `id` (a registered id, or its current generation's id), or null. Its `id`
  /// is the generation's. Never loads.
  descriptor_ptr find(const model_id& id) const;
  /// The descriptor of the generation `generation` exactly (a lease's or pin's model), or null once that
  /// generation is retired (removed or replaced).
  descriptor_ptr find_generation(const model_id& generation) const;
  /// The registered id whose current generation is `generation`, or none (retired, or never).
  std::optional<model_id> registered_id(const model_id& generation) const;
  /// What `add` checks of a descriptor alone (not whether its id is taken).
  static std::optional<failure> validate(const model_descriptor& descriptor);
  /// The registered ids (not generations).
  std::vector<model_id> ids() const;
  size_t size() const;

private:

  mutable std::shared_mutex mutex_;
  std::map<model_id, descriptor_ptr> models_;        // by registered id
  std::map<model_id, model_id> registered_of_;       // current generation id -> registered id
  std::map<model_id, uint64_t> generations_;         // last generation of every id ever registered
};

/// A synthetic model for samples, tests and benches: float32 tensors of the given element counts, filled
/// deterministically from `seed`, plus `opaque_bytes` of non-tensor payload. Its `bytes` are exact.
/// Throws `request_error` (invalid_argument) for a negative count or one past any plausible size.
model_descriptor synthetic_model(model_id id, std::vector<int64_t> tensor_numels, uint64_t seed = 0,
                                 bytes_t opaque_bytes = 0);

} // namespace mcache
