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
  for (size_t r = 0; r + 1 < slots_ && r < streamed_.size(); ++r)
    issue(r);  // the first slots-1 copies start before anything is asked for
}

tensor_stream::~tensor_stream() {
  try {
    wait_all();
  } catch (...) {
  }
  ring_->close_stream();
}

void tensor_stream::wait_all() {
  for (auto& kv : in_flight_)
    kv.second.wait();
  in_flight_.clear();
}

void tensor_stream::issue(size_t rank) {
  if (rank >= streamed_.size() || in_flight_.count(rank))
    return;
  const auto& host = host_->tensors.at(streamed_[rank]).tensor;
  in_flight_.emplace(rank, backend_->copy_async(host, ring_->slot(rank % slots_)));
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
  auto it = in_flight_.find(rank);
  if (it == in_flight_.end()) {
    // Out of order: the ring holds other tensors; finish them, then copy this one.
    wait_all();
    issue(rank);
    it = in_flight_.find(rank);
  }
  auto tensor = it->second.get();
  in_flight_.erase(it);
  // Copies in flight for earlier ranks are stale now; the slot of the previous rank is free again.
  for (auto stale = in_flight_.begin(); stale != in_flight_.end();) {
    if (stale->first < rank) {
      stale->second.wait();
      stale = in_flight_.erase(stale);
    } else {
      ++stale;
    }
  }
  issue(rank + slots_ - 1);  // overlaps the caller's use of `tensor`
  return tensor;
}

} // namespace mcache
