#include "runtime/core/transfer/staging_ring.hpp"

#include "runtime/core/transfer/device_backend.hpp"

namespace mcache {

staging_ring::staging_ring(std::shared_ptr<device_backend> backend, size_t slots, bytes_t slot_bytes)
  : backend_(std::move(backend)), slots_(slots), slot_bytes_(slot_bytes) {}

staging_ring::~staging_ring() = default;

void staging_ring::check_live() const {
  if (retired_)
    throw request_error(failure{errc::invalid_pin, "the pin of this stream was released: its tensors and staging "
                                                   "memory are no longer reserved; pin the model again"});
}

stream_slot& staging_ring::slot(size_t i) {
  check_live();
  if (buffers_.empty()) {
    for (size_t k = 0; k < slots_; ++k)
      buffers_.push_back(backend_->make_stream_slot(slot_bytes_));
    ++allocations_;
  }
  return *buffers_.at(i % slots_);
}

void staging_ring::open_stream() {
  check_live();
  if (in_use_.exchange(true))
    throw request_error(failure{errc::invalid_argument,
                                "this pin is already being streamed: a pin has one staging ring, used by one "
                                "stream at a time; finish (destroy) the other stream first"});
}


} // namespace mcache
