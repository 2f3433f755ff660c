#pragma once
// A blocking client of the runtime with RAII handles: a `lease` releases itself, a `pin_handle` unpins
// itself. A session is one CAF scoped actor: the holder of everything it acquires. Use it from one thread
// at a time. Handles should end with their session: one that outlives it releases nothing when it goes
// (the session's end released everything it held), and must not be read. None may outlive the runtime.

#include "messages/interfaces.hpp"
#include "runtime/core/transfer/tensor_stream.hpp"

#include <caf/scoped_actor.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <utility>

namespace mcache {

class runtime;

namespace detail {
/// Note [CAF's thread-local logger]: in CAF 0.17 every scoped actor leaves a reference to its actor
/// system's logger in the calling thread's storage, and `~actor_system` waits for every such reference to
/// go, so a server whose worker threads outlive the runtime would hang at shutdown. Declared before a
/// scoped actor, this drops the calling thread's reference once the scoped actor is gone.
struct release_thread_logger {
  release_thread_logger() = default;
  release_thread_logger(const release_thread_logger&) = delete;
  release_thread_logger& operator=(const release_thread_logger&) = delete;
  ~release_thread_logger();
};
} // namespace detail


class session;

/// Ends a lease or a pin exactly once: on release(), or when the token is destroyed (then quietly: a
/// destructor cannot report). Move-only; the handles below are built on it.
class release_token {
public:
  release_token() = default;
  explicit release_token(std::function<void()> release) : release_(std::move(release)) {}
  release_token(release_token&& other) noexcept : release_(std::exchange(other.release_, nullptr)) {}
  release_token& operator=(release_token&& other) noexcept;
  ~release_token() { release_quietly(); }

  explicit operator bool() const { return static_cast<bool>(release_); }
  /// Runs the release now; throws what it throws (the token is empty either way).
  void release();

private:
  void release_quietly() noexcept;
  std::function<void()> release_;
};

/// A lease on a model's RAM copy. Move-only; releases on destruction.
class lease {
public:
  lease() = default;
  lease(lease&&) noexcept = default;
  lease& operator=(lease&& other) noexcept;

  explicit operator bool() const { return static_cast<bool>(token_); }
  lease_id id() const { return grant_.lease; }
  const model_id& model() const { return grant_.model; }
  bytes_t bytes() const { return grant_.bytes; }
  /// The host copy. Throws `request_error` (invalid_lease) once the lease is released or moved from.
  const host_model& host() const;
  /// Ends the lease now. Throws `request_error` on failure (the handle is emptied either way).
  void release();

private:
  friend class session;
  lease(release_token token, ram_lease grant) : token_(std::move(token)), grant_(std::move(grant)) {}
  // Declared first, destroyed last: our alias of the host copy is gone before the release is sent.
  release_token token_;
  ram_lease grant_;
};

/// A pin: the model is resident on the device and locked there until the handle is released.
class pin_handle {
public:
  pin_handle() = default;
  pin_handle(pin_handle&&) noexcept = default;
  pin_handle& operator=(pin_handle&& other) noexcept;
  /// Retires the pin's staging ring (a live stream of it fails from then on), then releases.
  ~pin_handle();

  explicit operator bool() const { return static_cast<bool>(token_); }
  pin_id id() const { return grant_.pin; }
  const model_id& model() const { return grant_.model; }
  device_index device() const { return grant_.device; }
  /// That device as LibTorch names it (cuda:N, privateuseone:N; the CPU for a simulated device and CPU
  /// pins): where the pin's tensors are, and where the caller's own tensors for them belong.
  c10::Device torch_device() const;
  bytes_t resident_bytes() const { return grant_.resident_bytes; }
  bytes_t working_bytes() const { return grant_.working_bytes; }
  /// The device copy of the tensor named `name` (undefined if there is none, or if it streams). Throws
  /// `request_error` (invalid_pin) once the pin is released or moved from, as `tensors` and `stream` do.
  at::Tensor tensor(const std::string& name) const { return tensors().find(name); }
  const device_model& tensors() const;
  /// Whether some tensors are not resident and must be streamed (see `stream()`).
  bool partial() const { return grant_.partial(); }
  /// Streams the tensors in order, resident ones from the device copy, the rest through staging buffers
  /// with copies overlapping use. Use it while the pin is held.
  /// The pin's staging ring is allocated at the first stream and reused by the next ones (one at a time).
  tensor_stream stream() const;
  /// The pin's staging ring (for stats and tests: how often it was allocated). Throws `request_error`
  /// (invalid_pin) once the pin is released.
  const staging_ring& staging() const;
  const device_pin& grant() const { return grant_; }
  void release();

private:
  friend class session;
  friend class stage_context;  // the scheduler's stages hold pins the scheduler releases
  void end_use() noexcept;
  void note_stream() const;
  pin_handle(release_token token, device_pin grant, std::shared_ptr<staging_ring> staging)
    : token_(std::move(token)), grant_(std::move(grant)), staging_(std::move(staging)) {}
  // Declared first, destroyed last: our aliases of the device copy are gone before the release is sent, so
  // a later eviction frees the memory it accounts for.
  release_token token_;
  device_pin grant_;
  std::shared_ptr<staging_ring> staging_;  // Note [Staging belongs to the pin]; retired on release
  mutable std::vector<c10::Stream> used_on_;  // streams current when tensors were handed out (for release)
};

/// A blocking client: one holder. Movable (its handles stay valid when it moves); use it from one thread
/// at a time, and end it (with its handles) before the runtime.
class session {
public:
  explicit session(runtime& rt);
  session(session&&) noexcept;
  /// Not assignable: the session assigned over would end while its handles still point at it.
  session& operator=(session&&) = delete;
  ~session();

  /// Leases `model`, loading it if needed, waiting up to `wait` (default: the runtime's) for room. A wait
  /// is 0 (do not wait) or more; a negative one is invalid_argument, here and in the calls below.
  lease acquire(const model_id& model, std::optional<std::chrono::nanoseconds> wait = std::nullopt);
  /// Leases all of `models` together, or none, waiting up to `wait` for room for all of them at once: a
  /// job that needs several models never holds some while waiting for the others (no deadlock between
  /// jobs). Leases come in the order asked. An empty list, or one naming a model twice, is
  /// `invalid_argument`.
  std::vector<lease> acquire_all(const std::vector<model_id>& models,
                                 std::optional<std::chrono::nanoseconds> wait = std::nullopt);
  /// Pins the model of `l` on `device` with `working_bytes` of working memory.
  pin_handle pin(const lease& l, device_index device, bytes_t working_bytes = 0,
                 std::optional<std::chrono::nanoseconds> wait = std::nullopt);
  /// Pins the model of `l` on the device the runtime's placement policy picks among devices 0..N-1 (by
  /// default: where it is most resident already, then its preferred device, then the most free memory).
  pin_handle pin_anywhere(const lease& l, bytes_t working_bytes = 0,
                          std::optional<std::chrono::nanoseconds> wait = std::nullopt);
  /// Frees device memory held by unpinned models (see device_actor's offload). Returns bytes freed.
  bytes_t offload(device_index device, const model_id& model = {}, bytes_t bytes = 0);
  /// Frees RAM held by unleased models: `model` alone (empty: any, by policy) until at least `bytes` are
  /// freed (0: all). Returns bytes freed.
  bytes_t trim_ram(const model_id& model = {}, bytes_t bytes = 0);

  /// Asked every `every`, on the calling thread, while `acquire`, `acquire_all` or `pin` waits for its
  /// answer; once it returns true, the call withdraws its request, which ends with `cancelled` whether it
  /// waited for room or for a load or copy under way (Note [Admission] rule 6: the load goes on for others
  /// waiting for it, or stops if nobody does); one granted before the withdrawal arrived returns its lease
  /// or pin as usual: the caller decides whether to keep it. The Python binding checks for
  /// Ctrl-C here. A check that reads an atomic flag lets another thread cancel. A check that throws
  /// withdraws the call too, and the call throws that once its answer is in.
  void set_wait_check(std::function<bool()> check, std::chrono::milliseconds every = std::chrono::milliseconds(100));

  caf::scoped_actor& self();

private:
  struct core;  // the runtime and the scoped actor; handles point here, so they survive a move
  caf::timespan wait_or_default(std::optional<std::chrono::nanoseconds> wait) const;

  std::shared_ptr<core> core_;  // shared with its handles' releases, weakly (see session.cpp)
};

} // namespace mcache
