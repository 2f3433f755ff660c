#include "runtime/fleet/router.hpp"

#include "actors/router_actor.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/waits.hpp"
#include "runtime/core/fleet/routing.hpp"

#include <caf/send.hpp>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

namespace mcache::fleet {

endpoint parse_endpoint(const std::string& text) {
  auto colon = text.rfind(':');
  auto bad = [&](const std::string& why) {
    throw request_error(failure{errc::invalid_argument, "node address '" + text + "': " + why + " (want host:port)"});
  };
  if (colon == std::string::npos)
    bad("no port");  // "localhost" alone: the host is there, the port is what is missing
  if (colon == 0)
    bad("no host");
  endpoint e;
  e.host = text.substr(0, colon);
  if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']')
    e.host = e.host.substr(1, e.host.size() - 2);
  auto port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    bad("no port");
  auto p = std::stoul(port);
  if (p == 0 || p > 65535)
    bad("the port must be 1 to 65535");
  e.port = static_cast<std::uint16_t>(p);
  return e;
}

struct router::impl {
  router_options options;
  std::unique_ptr<network_system> net;
  caf::actor actor;
  std::atomic<std::uint64_t> next_key{1};
  std::string key_prefix;  // "<name>-<random>-": a router started again under its name makes new keys
};

router::router(router_options options) : impl_(std::make_unique<impl>()) {
  auto refuse = [](std::string what) { throw request_error(failure{errc::invalid_argument, std::move(what)}); };
  if (options.nodes.empty())
    refuse("a router needs at least one node address");
  for (const auto& n : options.nodes) {
    if (n.host.empty() || n.port == 0)
      refuse("node address '" + n.host + ":" + std::to_string(n.port) + "' needs a host and a port");
    if (!is_loopback(n.host) && !options.tls.enabled())
      refuse("node '" + n.host + ":" + std::to_string(n.port) + "' is not on loopback: the router needs TLS "
             "(a certificate, a key and the fleet's CA file; Note [Fleet security])");
  }
  if (options.reconnect_interval <= std::chrono::milliseconds::zero())
    refuse("reconnect_interval must be more than 0");
  if (options.job_timeout <= std::chrono::milliseconds::zero() || options.wait_for_node < std::chrono::milliseconds::zero())
    refuse("job_timeout must be more than 0 and wait_for_node at least 0");
  if (options.job_timeout >= for_ever || options.wait_for_node >= for_ever)  // in milliseconds: no overflow
    refuse("job_timeout and wait_for_node must be less than a century (timers add them to now)");
  if (options.name.empty()) {
    std::random_device rd;
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", rd());
    options.name = std::string{"r"} + buf;
  }
  if (options.name.size() > 64 || !is_job_key_text(options.name))
    refuse("the router's name is its job keys' prefix: at most 64 characters of printable ASCII without spaces");
  impl_->options = options;
  {
    char nonce[9];
    std::snprintf(nonce, sizeof nonce, "%08x", std::random_device{}());
    impl_->key_prefix = options.name + "-" + nonce + "-";
  }
  impl_->net = std::make_unique<network_system>(options.tls, options.network_threads, options.live);
  impl_->actor = spawn_router_actor(*impl_->net, options);
}

router::~router() {
  caf::anon_send(impl_->actor, std::make_shared<router_command>(router_command{router_command::kind::shutdown, 0}));
  impl_->actor = nullptr;
  impl_->net.reset();  // waits for the actor, closes the connections
}

std::future<job_result> router::submit(job_request request) {
  auto call = std::make_shared<router_call>();
  if (request.key.empty())
    request.key = impl_->key_prefix + std::to_string(impl_->next_key++);
  call->request = std::move(request);
  auto f = call->answer.get_future();
  caf::anon_send(impl_->actor, std::move(call));
  return f;
}

router_stats router::stats() {
  auto call = std::make_shared<router_stats_call>();
  auto f = call->answer.get_future();
  caf::anon_send(impl_->actor, call);
  return f.get();
}

std::size_t router::wait_for_nodes(std::size_t count, std::chrono::milliseconds timeout) {
  timeout = std::min<std::chrono::milliseconds>(timeout, for_ever);  // now + max() overflows
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::size_t up = 0;
    for (const auto& n : stats().nodes)
      up += n.up && n.reported ? 1 : 0;
    if (up >= count || std::chrono::steady_clock::now() >= until)
      return up;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

const std::string& router::name() const { return impl_->options.name; }

} // namespace mcache::fleet
