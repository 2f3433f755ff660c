#include "runtime/session.hpp"

#include "messages/errors.hpp"
#include "runtime/runtime.hpp"
#include "runtime/core/transfer/device_backend.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <exception>
#include <functional>

namespace mcache {

namespace {

// Requests below use no client-side timeout (caf::infinite): the tiers answer every request by its
// deadline (a grant or an error), a client-side timeout would cost a timer per request, and a grant
// arriving after it would be dropped with its lease still held. A runtime that goes away answers with
// `shutting_down`.

[[noreturn]] void raise(const caf::error& e) { throw request_error(to_failure(e)); }

} // namespace

// -- handles ----------------------------------------------------------------------------------------------

release_token& release_token::operator=(release_token&& other) noexcept {
  if (this != &other) {
    release_quietly();
    release_ = std::exchange(other.release_, nullptr);
  }
  return *this;
}

void release_token::release() {
  if (auto f = std::exchange(release_, nullptr))
    f();
}

void release_token::release_quietly() noexcept {
  try {
    release();
  } catch (...) {
    // A destructor cannot report; the explicit release() does.
  }
}

lease& lease::operator=(lease&& other) noexcept {
  if (this != &other) {
    grant_.payload.reset();
    token_ = std::move(other.token_);
    grant_ = std::move(other.grant_);
  }
  return *this;
}

const host_model& lease::host() const {
  if (!grant_.payload)
    throw request_error(failure{errc::invalid_lease, "host() of a released lease; acquire the model again"});
  return *grant_.payload;
}

void lease::release() {
  grant_.payload.reset();
  token_.release();
}

// The pin ends: its tensors may still be read by work the caller enqueued on its current stream, so the
// backend keeps their memory until that work has run (Note [One device-generic backend]).
void pin_handle::end_use() noexcept {
  if (staging_)
    staging_->retire();
  try {
    if (token_ && grant_.backend && grant_.view)
      grant_.backend->mark_in_use(*grant_.view, used_on_);
  } catch (...) {
  }
  used_on_.clear();
}

c10::Device pin_handle::torch_device() const {
  return grant_.backend ? grant_.backend->torch_device() : c10::Device(c10::DeviceType::CPU);
}

void pin_handle::note_stream() const {
  if (!grant_.backend)
    return;
  auto s = grant_.backend->current_stream();
  if (s && std::find(used_on_.begin(), used_on_.end(), *s) == used_on_.end())
    used_on_.push_back(*s);
}

pin_handle& pin_handle::operator=(pin_handle&& other) noexcept {
  if (this != &other) {
    end_use();
    grant_.view.reset();
    grant_.host.reset();
    token_ = std::move(other.token_);
    grant_ = std::move(other.grant_);
    staging_ = std::move(other.staging_);
    used_on_ = std::move(other.used_on_);
  }
  return *this;
}

void pin_handle::release() {
  end_use();
  staging_.reset();  // the slots go now (a stream still alive keeps them until it ends)
  grant_.view.reset();
  grant_.host.reset();
  token_.release();
}

pin_handle::~pin_handle() { end_use(); }

const staging_ring& pin_handle::staging() const {
  if (!staging_)
    throw request_error(failure{errc::invalid_pin, "staging() of a released pin"});
  return *staging_;
}

const device_model& pin_handle::tensors() const {
  if (!token_ || !grant_.view)
    throw request_error(failure{errc::invalid_pin, "tensors of a released pin; pin the model again"});
  note_stream();
  return *grant_.view;
}

tensor_stream pin_handle::stream() const {
  note_stream();
  if (!token_)
    throw request_error(failure{errc::invalid_pin, "stream() of a released pin; pin the model again"});
  return tensor_stream{grant_, staging_};
}

// -- session ----------------------------------------------------------------------------------------------

detail::release_thread_logger::~release_thread_logger() { caf::logger::set_current_actor_system(nullptr); }

// A handle's release reaches its session through a weak reference: a handle that outlives its session
// (a scoping mistake) finds it gone and does nothing, and that is right, since the session's actor
// ended with the session and the tiers released everything it held then.
struct session::core : std::enable_shared_from_this<session::core> {
  explicit core(runtime& r) : rt(&r), self(r.system()) {
    // The session may move to another thread and end there: this thread must not keep the reference.
    caf::logger::set_current_actor_system(nullptr);
  }

  // Ends a lease (sent to the RAM-cache actor) or a pin (to its device actor). After the runtime's
  // shutdown the tiers still take releases (they stop when the runtime is destroyed), so what a handle
  // held across it is freed, as the scheduler's stages free theirs; an error then is not thrown (a handle
  // going out of scope must not throw, and nothing more can be asked of the runtime anyway).
  template <class Handle, class Id>
  void release(const Handle& to, Id id) {
    self->request(to, caf::infinite, release_atom::value, id).receive([] {}, [&](caf::error& e) {
      if (!rt->stopped())
        raise(e);
    });
  }

  /// The handle of a granted lease: its release goes through this session, if it still exists.
  lease lease_of(ram_lease grant) {
    auto id = grant.lease;
    return lease{release_token{[weak = weak_from_this(), id] {
                   if (auto held = weak.lock())
                     held->release(held->rt->ram_cache(), id);
                 }},
                 std::move(grant)};
  }

  /// Receives the answer to the request `mid` (a grant of type T, handed to `granted`, or an error,
  /// thrown). With a wait check set, it asks the check after each `check_every` without an answer; once
  /// the check says so it sends `withdraw` (a message to the request's tier, from this actor, so it
  /// arrives after the request) and goes on receiving: `cancelled` if the request still waited (for room,
  /// a load or a copy), or the grant if it came first. A check that throws withdraws
  /// too, and its exception is thrown once the answer is in (a grant then goes with `granted`'s result).
  template <class T, class Granted, class Withdraw>
  void receive_answer(caf::message_id mid, Granted granted, Withdraw withdraw) {
    bool answered = false;
    std::exception_ptr check_threw;
    // CAF moves the handlers into each receive's behavior: they capture by reference only.
    auto on_grant = [&](T& x) {
      answered = true;
      granted(x);
    };
    auto on_error = [&](caf::error& e) {
      answered = true;
      if (check_threw)
        std::rethrow_exception(check_threw);
      raise(e);
    };
    caf::blocking_actor::accept_one_cond one;
    if (!wait_check) {
      self->varargs_receive(one, mid, on_grant, on_error);
      return;
    }
    bool withdrawn = false;
    while (!answered)
      self->varargs_receive(one, mid, on_grant, on_error, caf::after(check_every) >> [&] {
        if (withdrawn)
          return;
        bool stop = true;
        try {
          stop = wait_check();
        } catch (...) {
          check_threw = std::current_exception();
        }
        if (stop) {
          withdraw();
          withdrawn = true;
        }
      });
    if (check_threw)
      std::rethrow_exception(check_threw);
  }

  // Destroyed in reverse order: the scoped actor first, then the thread's logger reference.
  detail::release_thread_logger release_logger;
  runtime* rt;
  caf::scoped_actor self;
  std::function<bool()> wait_check;  // set_wait_check
  std::chrono::milliseconds check_every{100};
  std::uint64_t next_tag = 1;  // tags a session's acquires, so that a wait check can withdraw one
};

session::session(runtime& rt) : core_(std::make_shared<core>(rt)) {}
session::session(session&&) noexcept = default;
session::~session() = default;

caf::scoped_actor& session::self() { return core_->self; }

caf::timespan session::wait_or_default(std::optional<std::chrono::nanoseconds> wait) const {
  if (wait && *wait < std::chrono::nanoseconds::zero())  // as the runtime's default_wait and a job's deadline
    throw request_error(failure{errc::invalid_argument, "a wait must not be negative (0: do not wait)"});
  return wait ? caf::timespan{*wait} : caf::timespan{core_->rt->options().default_wait};
}

lease session::acquire(const model_id& model, std::optional<std::chrono::nanoseconds> wait) {
  auto w = wait_or_default(wait);
  auto* c = core_.get();
  lease result;
  auto tag = c->next_tag++;
  auto ram = c->rt->ram_cache();
  auto answer = c->self->request(ram, caf::infinite, acquire_atom::value, model, w, tag);
  c->receive_answer<ram_lease>(
    answer.id(),
    [&](ram_lease& grant) { result = c->lease_of(std::move(grant)); },
    [&] { c->self->send(ram, withdraw_atom::value, tag); });
  return result;
}

std::vector<lease> session::acquire_all(const std::vector<model_id>& models,
                                       std::optional<std::chrono::nanoseconds> wait) {
  auto w = wait_or_default(wait);
  auto* c = core_.get();
  std::vector<lease> result;
  auto tag = c->next_tag++;
  auto ram = c->rt->ram_cache();
  auto answer = c->self->request(ram, caf::infinite, acquire_atom::value, models, w, tag);
  c->receive_answer<std::vector<ram_lease>>(
    answer.id(),
    [&](std::vector<ram_lease>& grants) {
      for (auto& grant : grants)
        result.push_back(c->lease_of(std::move(grant)));
    },
    [&] { c->self->send(ram, withdraw_atom::value, tag); });
  return result;
}

pin_handle session::pin(const lease& l, device_index device, bytes_t working_bytes,
                        std::optional<std::chrono::nanoseconds> wait) {
  if (!l)
    throw request_error(failure{errc::invalid_lease, "pin needs a live lease (this one was released)"});
  auto* c = core_.get();
  auto dev = c->rt->device(device);
  auto w = wait_or_default(wait);
  pin_handle result;
  auto answer = c->self->request(dev, caf::infinite, pin_atom::value, l.id(), working_bytes, w);
  c->receive_answer<device_pin>(
    answer.id(),
    [&](device_pin& grant) {
      auto id = grant.pin;
      auto slots = std::max<size_t>(2, grant.staging_slots);
      auto ring = std::make_shared<staging_ring>(grant.backend, slots, grant.staging_bytes / slots);
      result = pin_handle{release_token{[weak = c->weak_from_this(), dev, id] {
                             if (auto held = weak.lock())
                               held->release(dev, id);
                           }},
                           std::move(grant), std::move(ring)};
    },
    [&] { c->self->send(dev, withdraw_atom::value, l.id()); });
  return result;
}

void session::set_wait_check(std::function<bool()> check, std::chrono::milliseconds every) {
  if (every <= std::chrono::milliseconds::zero())
    throw request_error(failure{errc::invalid_argument, "a wait check needs an interval of at least 1 ms"});
  core_->wait_check = std::move(check);
  core_->check_every = every;
}

pin_handle session::pin_anywhere(const lease& l, bytes_t working_bytes,
                                 std::optional<std::chrono::nanoseconds> wait) {
  if (!l)
    throw request_error(failure{errc::invalid_lease, "pin needs a live lease (this one was released)"});
  auto& rt = *core_->rt;
  if (rt.device_count() == 0)
    throw request_error(failure{errc::invalid_device, "this runtime has no device to place a pin on"});
  std::vector<placement_view> views;
  for (size_t i = 0; i < rt.device_count(); ++i)
    core_->self->request(rt.device(static_cast<device_index>(i)), caf::infinite, place_atom::value, l.model())
      .receive([&](placement_view& v) { views.push_back(v); }, [&](caf::error& e) { raise(e); });
  auto descriptor = rt.models().find_generation(l.model());
  auto model = descriptor ? *descriptor : model_descriptor{};
  if (!descriptor) {  // a retired generation: its bytes are the lease's
    model.id = l.model();
    model.bytes = l.bytes();
  }
  return pin(l, rt.placement().choose(model, working_bytes, views), working_bytes, wait);
}

/// The id the tiers know `model` by, for offload and trim_ram: the current generation of a registered id
/// (Note [Remove and replace]: "unet#2" once "unet" was replaced, so offloading "unet" frees the copy new
/// pins use), or "" (any model) as is. An id the catalog does not know is `unknown_model`, not a model
/// that merely is not resident. (A retired generation is dropped as soon as nothing holds it, so no
/// unpinned copy of one is left to free.)
static model_id tier_id(runtime& rt, const model_id& model, const char* call) {
  if (model.empty())
    return model;
  if (auto d = rt.models().find(model))
    return d->id;
  throw request_error(failure{errc::unknown_model, std::string{call} + " of '" + model
                                                     + "': no such model in the catalog (is it registered?)"});
}

bytes_t session::offload(device_index device, const model_id& model, bytes_t bytes) {
  bytes_t freed = 0;
  auto dev = core_->rt->device(device);  // an index that does not exist is invalid_device, first
  core_->self->request(dev, caf::infinite, offload_atom::value, tier_id(*core_->rt, model, "offload"), bytes)
    .receive([&](bytes_t n) { freed = n; }, [&](caf::error& e) { raise(e); });
  return freed;
}

bytes_t session::trim_ram(const model_id& model, bytes_t bytes) {
  bytes_t freed = 0;
  core_->self->request(core_->rt->ram_cache(), caf::infinite, trim_atom::value,
                       tier_id(*core_->rt, model, "trim_ram"), bytes)
    .receive([&](bytes_t n) { freed = n; }, [&](caf::error& e) { raise(e); });
  return freed;
}

} // namespace mcache
