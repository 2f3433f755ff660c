#include "runtime/fleet/node.hpp"

#include "actors/node_actor.hpp"
#include "messages/errors.hpp"
#include "runtime/metrics.hpp"
#include "runtime/runtime.hpp"

#include <caf/atom.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <cerrno>
#include <cstring>
#include <random>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

namespace mcache::fleet {

namespace {

void refuse(std::string what) { throw request_error(failure{errc::invalid_argument, std::move(what)}); }

node_summary make_summary(node_shared& shared) {
  node_summary s;
  s.node = shared.name;
  s.incarnation = shared.incarnation;
  // The counters before the tiers: a summary that counts a job's end then shows the tiers after it (a
  // router keeps the models of an answered job as present until such a summary comes).
  s.queued = shared.queued.load();
  s.jobs_served = shared.served.load();
  s.jobs_failed = shared.failed.load();
  for (const auto& [name, fn] : shared.pipelines)
    s.pipelines.push_back(name);
  auto stats = shared.rt->stats();
  auto held = shared.rt->holdings();
  for (const auto& m : held.ram.models)
    if (m.state == "resident")
      s.resident.push_back({m.model, ram_tier, m.bytes, m.model_bytes});
  for (std::size_t d = 0; d < held.devices.size(); ++d)
    for (const auto& m : held.devices[d].models)
      if (m.state == "resident" || m.state == "partial")
        s.resident.push_back({m.model, static_cast<std::int32_t>(d), m.bytes, m.model_bytes});
  auto room = [](bytes_t budget, bytes_t used) { return budget > used ? budget - used : 0; };
  s.tiers.push_back({ram_tier, stats.ram.budget_bytes, room(stats.ram.budget_bytes, stats.ram.used_bytes)});
  for (const auto& d : stats.devices) {
    auto usable = d.budget_bytes - std::min(d.budget_bytes, d.reserve_bytes);
    s.tiers.push_back({d.device, usable, room(usable, d.used_bytes)});
    s.bytes_to_devices += d.bytes_copied_in;
  }
  s.bytes_from_disk = stats.ram.bytes_loaded;
  return s;
}

/// "<host>-<pid>", and "-<k>" after it for the k-th further node of the process.
std::string default_name() {
  static std::atomic<int> nodes{0};
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  auto k = nodes++;
  return std::string{host} + "-" + std::to_string(::getpid()) + (k > 0 ? "-" + std::to_string(k) : "");
}

} // namespace

struct node::impl {
  std::shared_ptr<node_shared> shared;
  std::unique_ptr<network_system> net;
  node_actor actor;
  std::uint16_t port = 0;
  std::thread summaries;

  /// Note [Node jobs]: a summary when something changed, at most one per interval; also polled every
  /// interval, since models leave tiers without a job event (keep-alive, eviction by another client).
  void push_summaries(node_summary initial) {
    auto& s = *shared;
    auto interval = s.options.summary_interval;
    node_summary last = initial;
    std::uint64_t sequence = 1;
    for (;;) {
      std::unique_lock<std::mutex> lock{s.wake_mutex};
      s.wake.wait_for(lock, interval, [&] { return s.stopping || s.dirty; });
      if (s.stopping)
        return;
      s.dirty = false;
      lock.unlock();
      node_summary now;
      try {
        now = make_summary(s);
      } catch (const request_error&) {
        return;  // the runtime stopped
      }
      if (!same_state(now, last)) {
        now.sequence = ++sequence;
        last = now;
        auto ev = std::make_shared<node_event>();
        ev->what = node_event::kind::summary;
        ev->summary = std::move(now);
        s.post(std::move(ev));
      }
      lock.lock();  // the rate limit: the next summary no sooner than one interval from now
      s.wake.wait_for(lock, interval, [&] { return s.stopping; });
      if (s.stopping)
        return;
    }
  }
};

node::node(runtime& rt, scheduler& sched, node_options options, std::map<std::string, pipeline> pipelines)
  : impl_(std::make_unique<impl>()) {
  if (pipelines.empty())
    refuse("a node needs at least one pipeline: jobs name a pipeline, and code does not travel");
  for (const auto& [name, fn] : pipelines)
    if (name.empty() || name.size() > options.limits.max_name || !fn)
      refuse("pipeline '" + name + "' needs a name of 1 to " + std::to_string(options.limits.max_name)
             + " characters and a function");
  if (!is_loopback(options.listen) && !options.tls.enabled())
    refuse("node: listening on '" + options.listen + "' (not loopback) needs TLS: set a certificate, a key and "
           "a CA file (Note [Fleet security])");
  if (options.summary_interval <= std::chrono::milliseconds::zero() || options.summary_interval > std::chrono::minutes(1))
    refuse("node: summary_interval must be more than 0 and at most 1 min");
  if (options.network_threads == 0)
    refuse("node: network_threads must be at least 1");
  if (!options.journal_path.empty()) {
    // Tried here, so that a journal that cannot be written stops the start with the reason: the node's
    // actor opens it again for good, and had written nothing, silently, for a path it could not open.
    int fd = ::open(options.journal_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
      refuse("node: the journal '" + options.journal_path + "' cannot be opened for appending: " + std::strerror(errno));
    ::close(fd);
  }
  auto shared = std::make_shared<node_shared>();
  shared->rt = &rt;
  shared->sched = &sched;
  shared->options = options;
  shared->pipelines = std::move(pipelines);
  impl_->shared = shared;
  impl_->net = std::make_unique<network_system>(options.tls, options.network_threads, options.live);
  auto& sys = *impl_->net->system;
  shared->name = options.name.empty() ? default_name() : options.name;
  shared->incarnation = std::random_device{}() * 4294967296ull + std::random_device{}();
  auto first = make_summary(*shared);
  impl_->actor = spawn_node_actor(sys, shared, first);
  {
    std::lock_guard<std::mutex> guard{shared->link_mutex};
    shared->self = impl_->actor;
    shared->alive = true;
  }
  caf::scoped_actor self{sys};
  std::optional<failure> failed;
  self->request(impl_->net->connector(), caf::infinite, caf::publish_atom::value, options.port,
                caf::actor_cast<caf::strong_actor_ptr>(impl_->actor), sys.message_types(impl_->actor),
                options.listen, options.reuse_address)
    .receive([&](std::uint16_t port) { impl_->port = port; },
             [&](caf::error& e) {
               failed = failure{errc::invalid_argument, "node: cannot listen on " + options.listen + ":"
                                                          + std::to_string(options.port)
                                                          + " (is another process listening there, or is the address "
                                                            "not this machine's?): "
                                                          + sys.render(e)};
             });
  if (failed) {
    {
      std::lock_guard<std::mutex> guard{shared->link_mutex};
      shared->alive = false;
      shared->self = nullptr;  // the actor and shared must not keep each other alive
    }
    caf::anon_send(impl_->actor, std::make_shared<node_event>(node_event{node_event::kind::stop, {}, job_result{}, {}}));
    impl_->actor = nullptr;
    throw request_error(*failed);
  }
  impl_->summaries = std::thread([this, first] { impl_->push_summaries(first); });
}

node::~node() {
  auto& s = *impl_->shared;
  {
    std::lock_guard<std::mutex> guard{s.wake_mutex};
    s.stopping = true;
  }
  s.wake.notify_all();
  if (impl_->summaries.joinable())
    impl_->summaries.join();
  node_actor actor;
  {
    std::lock_guard<std::mutex> guard{s.link_mutex};
    s.alive = false;  // a job that ends from now on tells nobody
    actor = std::move(s.self);
    s.self = nullptr;
  }
  auto stop = std::make_shared<node_event>();
  stop->what = node_event::kind::stop;
  caf::anon_send(actor, std::move(stop));
  actor = nullptr;
  impl_->actor = nullptr;
  impl_->net.reset();  // waits for the actor, closes the port
}

bool node::serving() const { return !impl_->shared->actor_lost.load(); }

std::uint16_t node::port() const { return impl_->port; }
const std::string& node::name() const { return impl_->shared->name; }
node_summary node::summary() const { return make_summary(*impl_->shared); }

std::string node::metrics_text() const {
  const auto& s = *impl_->shared;
  std::vector<std::pair<std::string, std::string>> node{{"node", s.name}};
  return prometheus_metric("mcache_node_jobs_served_total", "counter", "Jobs this node ran to their end.",
                           s.served.load(), node)
         + prometheus_metric("mcache_node_jobs_failed_total", "counter", "Jobs that failed or were cancelled here.",
                             s.failed.load(), node)
         + prometheus_metric("mcache_node_jobs_queued", "gauge", "Jobs accepted and not ended (queued or running).",
                             s.queued.load(), node);
}

} // namespace mcache::fleet
