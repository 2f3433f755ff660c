#pragma once
// Note [Staging belongs to the pin]: a streaming pin reserves `staging_slots` buffers of the largest
// streamed tensor as working memory (device_tier.hpp). This ring is that memory: allocated once, at the
// pin's first stream, and reused by every stream of the pin, one stream at a time, so streaming does not
// allocate (or fault in) fresh memory per pass. When the pin is released the ring is retired: a stream of a
// released pin fails with `invalid_pin` at its next get(), so no tensor of a pin can be taken from memory
// that the tier already counts as free. (A tensor taken before the release is the caller's to drop: a
// streamed one is only valid until the next get() anyway.) The slots themselves go with the last holder
// of the ring (the pin handle, or a stream still alive), so a copy in flight never loses its buffer.

#include "messages/errc.hpp"
#include "messages/ids.hpp"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <memory>
#include <vector>

namespace mcache {

class device_backend;
class stream_slot;

class staging_ring {
public:
  /// `slots` buffers of `slot_bytes` each, allocated from `backend` on first use (none when 0 bytes).
  staging_ring(std::shared_ptr<device_backend> backend, size_t slots, bytes_t slot_bytes);
  ~staging_ring();

  size_t slots() const { return slots_; }
  bytes_t slot_bytes() const { return slot_bytes_; }
  /// Slot `i` (the slots are allocated on the first call). Throws request_error(invalid_pin) once retired.
  stream_slot& slot(size_t i);
  /// How many times the slots were allocated: 1 for a ring that streamed, however many passes.
  size_t allocations() const { return allocations_; }

  /// A stream takes the ring for its lifetime: request_error(invalid_argument) if another stream has it,
  /// request_error(invalid_pin) if the pin was released.
  void open_stream();
  void close_stream() noexcept { in_use_ = false; }
  /// Throws request_error(invalid_pin) if the pin was released.
  void check_live() const;

  /// The pin was released: later gets fail.
  void retire() { retired_ = true; }
  bool retired() const { return retired_; }

private:
  std::shared_ptr<device_backend> backend_;
  size_t slots_;
  bytes_t slot_bytes_;
  std::vector<std::unique_ptr<stream_slot>> buffers_;
  size_t allocations_ = 0;
  std::atomic<bool> in_use_{false};
  std::atomic<bool> retired_{false};
};

} // namespace mcache
