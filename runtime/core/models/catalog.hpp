#pragma once
// The catalog: which models exist, how big they are, and how to load them. Looking a model up never loads
// it; loading happens when the RAM tier admits an acquire.

#include "messages/errc.hpp"
#include "messages/ids.hpp"
#include "runtime/core/models/host_model.hpp"

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

struct model_descriptor {
  model_id id;
  bytes_t bytes = 0;            // exact RAM size of the loaded model (tensors + opaque payload); the loader
                                // must produce exactly this many bytes or the load fails
  std::string source;           // where it comes from, for messages ("synthetic", a file path, ...)
  model_loader loader;
  std::vector<std::string> tensor_names;     // in execution order when known (else declaration order)
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

/// A thread-safe registry of model descriptors.
class catalog {
public:
  /// Registers a model. Fails with `invalid_argument` on an empty id, zero bytes, no loader, or an id that
  /// is already registered (the catalog stays as it was).
  std::optional<failure> add(model_descriptor descriptor);
  /// The descriptor of `id`, or null. Never loads.
  descriptor_ptr find(const model_id& id) const;
  std::vector<model_id> ids() const;
  size_t size() const;

private:
  mutable std::shared_mutex mutex_;
  std::map<model_id, descriptor_ptr> models_;
};

/// A synthetic model for samples, tests and benches: float32 tensors of the given element counts, filled
/// deterministically from `seed`, plus `opaque_bytes` of non-tensor payload. Its `bytes` are exact.
model_descriptor synthetic_model(model_id id, std::vector<int64_t> tensor_numels, uint64_t seed = 0,
                                 bytes_t opaque_bytes = 0);

} // namespace mcache
