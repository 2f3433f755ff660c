#pragma once
// Streaming a pinned model's tensors for a compute loop, overlapping copies with use:
//
//   tensor_stream s{pin};
//   for (size_t i = 0; i < s.size(); ++i)
//     x = layer(x, s.get(i));
//
// Resident tensors come straight from the device copy. The others are copied from the RAM copy into a ring
// of staging buffers (the pin's staging memory, `staging_slots` of them) on the backend's copy path, and
// the copy of the next streamed tensor starts as soon as the current one is handed out, so it overlaps the
// caller's use of the current one. A streamed tensor stays valid until the next get() of a streamed
// tensor; a resident one as long as the pin. The staging buffers are the pin's (Note [Staging belongs to the
// pin], staging_ring.hpp): a stream of a released pin fails.

#include "messages/grants.hpp"
#include "runtime/core/transfer/staging_ring.hpp"

#include <map>
#include <vector>

namespace mcache {

class tensor_stream {
public:
  /// Streams `pin` through `ring`, the pin's staging ring (pin_handle::stream() passes its own). Without a
  /// ring (actor users holding a bare device_pin), the stream allocates one of its own.
  explicit tensor_stream(const device_pin& pin, std::shared_ptr<staging_ring> ring = nullptr);
  ~tensor_stream();
  tensor_stream(const tensor_stream&) = delete;
  tensor_stream& operator=(const tensor_stream&) = delete;

  size_t size() const { return view_->tensors.size(); }
  const std::string& name(size_t i) const { return host_->tensors.at(i).name; }
  bool resident(size_t i) const { return view_->tensors.at(i).tensor.defined(); }
  /// Tensor `i` on the device: resident, or streamed through a staging buffer.
  at::Tensor get(size_t i);
  /// Bytes this stream copied through its staging buffers so far.
  bytes_t streamed_bytes() const { return streamed_bytes_; }

private:
  static constexpr size_t none = static_cast<size_t>(-1);
  void fill(size_t rank);  // starts the copy of the rank-th streamed tensor into its slot

  std::shared_ptr<const device_model> view_;
  std::shared_ptr<const host_model> host_;
  std::shared_ptr<device_backend> backend_;
  std::shared_ptr<std::atomic<uint64_t>> counter_;
  std::vector<size_t> streamed_;        // indices of the tensors that stream, in order
  std::map<size_t, size_t> rank_of_;    // index -> position in streamed_
  std::shared_ptr<staging_ring> ring_;  // the pin's staging slots, held for this stream's lifetime
  size_t slots_ = 0;
  std::vector<size_t> filled_;          // per slot: the rank filled into it and not taken yet, or none
  size_t taken_ = none;                 // the slot whose tensor the caller holds
  bytes_t streamed_bytes_ = 0;
};

} // namespace mcache
