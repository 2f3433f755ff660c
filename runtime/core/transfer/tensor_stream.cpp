#include "runtime/core/transfer/tensor_stream.hpp"

#include "runtime/core/transfer/device_backend.hpp"

#include <algorithm>
#include <stdexcept>

namespace mcache {

tensor_stream::tensor_stream(const device_pin& pin, std::shared_ptr<staging_ring> ring)
  : view_(pin.view), host_(pin.host), backend_(pin.backend), counter_(pin.streamed_bytes), ring_(std::move(ring)) {
  if (!view_ || !host_ || !backend_)
    throw std::invalid_argument("tensor_stream needs a granted pin (view, host copy and backend)");
  bytes_t largest = 0;
  for (size_t i = 0; i < view_->tensors.size(); ++i)
    if (!view_->tensors[i].tensor.defined()) {
      rank_of_[i] = streamed_.size();
      streamed_.push_back(i);
      largest = std::max(largest, tensor_bytes(host_->tensors.at(i).tensor));
    }
  auto slots = std::max<size_t>(2, pin.staging_slots);
  if (!ring_)
    ring_ = std::make_shared<staging_ring>(backend_, slots, largest);
  ring_->open_stream();
  if (streamed_.empty())
    return;
  if (ring_->slots() < 2 || ring_->slot_bytes() < largest || largest * slots > pin.staging_bytes) {
    ring_->close_stream();
    throw std::logic_error("tensor_stream: the pin reserved " + std::to_string(pin.staging_bytes)
                           + " staging bytes, streaming needs " + std::to_string(largest * slots));
  }
  slots_ = ring_->slots();
  filled_.assign(slots_, none);
  for (size_t r = 0; r + 1 < slots_ && r < streamed_.size(); ++r)
    fill(r);  // the first slots-1 copies start before anything is asked for
}

tensor_stream::~tensor_stream() {
  try {
    if (taken_ != none && !ring_->retired())
      ring_->slot(taken_).give_back();
  } catch (...) {
  }
  ring_->close_stream();
}

void tensor_stream::fill(size_t rank) {
  auto s = rank % slots_;
  const auto& host = host_->tensors.at(streamed_[rank]).tensor;
  ring_->slot(s).fill(host);
  filled_[s] = rank;
  auto bytes = tensor_bytes(host);
  streamed_bytes_ += bytes;
  if (counter_)
    *counter_ += bytes;
}

at::Tensor tensor_stream::get(size_t i) {
  ring_->check_live();
  if (resident(i))
    return view_->tensors[i].tensor;
  auto rank = rank_of_.at(i);
  auto s = rank % slots_;
  // The tensor handed out last is done with, as of the work the caller has enqueued so far.
  if (taken_ != none) {
    ring_->slot(taken_).give_back();
    taken_ = none;
  }
  if (filled_[s] != rank)
    fill(rank);  // out of order, or not prefetched: copy it now
  auto tensor = ring_->slot(s).take();
  filled_[s] = none;
  taken_ = s;
  // Prefetch the next ones into the other slots, overlapping the caller's use of `tensor`. A slot's fill
  // waits (on the device) for the consumer's give-back of what the slot held before.
  for (size_t ahead = 1; ahead < slots_; ++ahead) {
    auto next = rank + ahead;
    if (next >= streamed_.size())
      break;
    if (filled_[next % slots_] != next)
      fill(next);
  }
  return tensor;
}

} // namespace mcache
