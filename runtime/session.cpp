#include "runtime/session.hpp"

#include "messages/errors.hpp"
#include "runtime/runtime.hpp"

#include <caf/all.hpp>

namespace mcache {

namespace {

// The tiers answer every request by its deadline (a grant or an error), so a client needs no timeout of
// its own: a client-side timeout would cost a timer per request, and a grant arriving after it would be
// dropped with its lease still held. A runtime that goes away answers with `shutting_down`.
caf::duration client_timeout(caf::timespan) { return caf::infinite; }

[[noreturn]] void raise(const caf::error& e) { throw request_error(to_failure(e)); }

} // namespace

request_error::request_error(failure f)
  : std::runtime_error(std::string{"mcache: "} + to_string(f.code) + ": " + f.detail), code_(f.code) {}

// -- lease ------------------------------------------------------------------------------------------------

lease::lease(lease&& other) noexcept
  : owner_(std::exchange(other.owner_, nullptr)), grant_(std::move(other.grant_)) {}

lease& lease::operator=(lease&& other) noexcept {
  if (this != &other) {
    try {
      release();
    } catch (...) {
    }
    owner_ = std::exchange(other.owner_, nullptr);
    grant_ = std::move(other.grant_);
  }
  return *this;
}

lease::~lease() {
  try {
    release();
  } catch (...) {
    // A destructor cannot report; the explicit release() does.
  }
}

void lease::release() {
  if (!owner_)
    return;
  auto owner = std::exchange(owner_, nullptr);
  grant_.payload.reset();
  owner->release_lease(grant_.lease);
}

// -- pin_handle -------------------------------------------------------------------------------------------

pin_handle::pin_handle(pin_handle&& other) noexcept
  : owner_(std::exchange(other.owner_, nullptr)),
    device_(std::move(other.device_)),
    grant_(std::move(other.grant_)) {}

pin_handle& pin_handle::operator=(pin_handle&& other) noexcept {
  if (this != &other) {
    try {
      release();
    } catch (...) {
    }
    owner_ = std::exchange(other.owner_, nullptr);
    device_ = std::move(other.device_);
    grant_ = std::move(other.grant_);
  }
  return *this;
}

pin_handle::~pin_handle() {
  try {
    release();
  } catch (...) {
  }
}

void pin_handle::release() {
  if (!owner_)
    return;
  auto owner = std::exchange(owner_, nullptr);
  // Drop our aliases of the device copy first, so a later eviction frees the memory it accounts for.
  grant_.view.reset();
  grant_.host.reset();
  owner->release_pin(device_, grant_.pin);
}

// -- session ----------------------------------------------------------------------------------------------

session::session(runtime& rt) : rt_(&rt), self_(rt.system()) {}

caf::timespan session::wait_or_default(std::optional<std::chrono::nanoseconds> wait) const {
  return wait ? caf::timespan{*wait} : caf::timespan{rt_->options().default_wait};
}

lease session::acquire(const model_id& model, std::optional<std::chrono::nanoseconds> wait) {
  auto w = wait_or_default(wait);
  lease result;
  self_->request(rt_->ram_cache(), client_timeout(w), acquire_atom::value, model, w)
    .receive([&](ram_lease& grant) { result = lease{this, std::move(grant)}; },
             [&](caf::error& e) { raise(e); });
  return result;
}

pin_handle session::pin(const lease& l, device_index device, bytes_t working_bytes,
                        std::optional<std::chrono::nanoseconds> wait) {
  if (!l)
    throw request_error(failure{errc::invalid_lease, "pin needs a live lease (this one was released)"});
  auto dev = rt_->device(device);
  auto w = wait_or_default(wait);
  pin_handle result;
  self_->request(dev, client_timeout(w), pin_atom::value, l.id(), working_bytes, w)
    .receive([&](device_pin& grant) { result = pin_handle{this, dev, std::move(grant)}; },
             [&](caf::error& e) { raise(e); });
  return result;
}

bytes_t session::offload(device_index device, const model_id& model, bytes_t bytes) {
  bytes_t freed = 0;
  self_->request(rt_->device(device), caf::infinite, offload_atom::value, model, bytes)
    .receive([&](bytes_t n) { freed = n; }, [&](caf::error& e) { raise(e); });
  return freed;
}

bytes_t session::trim_ram(const model_id& model, bytes_t bytes) {
  bytes_t freed = 0;
  self_->request(rt_->ram_cache(), caf::infinite, offload_atom::value, model, bytes)
    .receive([&](bytes_t n) { freed = n; }, [&](caf::error& e) { raise(e); });
  return freed;
}

void session::release_lease(lease_id id) {
  self_->request(rt_->ram_cache(), caf::infinite, release_atom::value, id)
    .receive([] {}, [&](caf::error& e) { raise(e); });
}

void session::release_pin(const device_actor& dev, pin_id id) {
  self_->request(dev, caf::infinite, release_atom::value, id)
    .receive([] {}, [&](caf::error& e) { raise(e); });
}

} // namespace mcache
