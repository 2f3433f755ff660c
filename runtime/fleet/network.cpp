#include "runtime/fleet/network.hpp"

#include "messages/errors.hpp"
#include "messages/fleet.hpp"

#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>

#include <arpa/inet.h>
#include <fstream>

namespace mcache::fleet {

std::optional<failure> tls_options::check() const {
  if (!enabled())
    return std::nullopt;
  auto need = [](const std::string& path, const char* what) -> std::optional<failure> {
    if (path.empty())
      return failure{errc::invalid_argument, std::string{"TLS needs a "} + what + " (certificate, key and CA file "
                                               "together: peers authenticate each other)"};
    if (!std::ifstream{path})
      return failure{errc::invalid_argument, std::string{"TLS "} + what + " '" + path + "' cannot be read"};
    return std::nullopt;
  };
  if (auto f = need(certificate, "certificate"))
    return f;
  if (auto f = need(key, "key"))
    return f;
  return need(ca_file, "CA file");
}

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1")
    return true;
  in_addr a{};
  return inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

void register_fleet_types(caf::actor_system_config& cfg) {
  register_types(cfg);
  cfg.add_message_type<job_request>("mcache_job_request");
  cfg.add_message_type<job_result>("mcache_job_result");
  cfg.add_message_type<node_summary>("mcache_node_summary");
}

network_system::network_system(const tls_options& options, std::size_t threads, liveness live) {
  if (auto f = options.check())
    throw request_error(*f);
  if (live.heartbeat <= std::chrono::milliseconds::zero() || live.connection_timeout < 2 * live.heartbeat)
    throw request_error(failure{errc::invalid_argument, "the heartbeat must be more than 0 and the connection "
                                                        "timeout at least two heartbeats"});
  register_fleet_types(config);
  config.load<caf::io::middleman>();
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("scheduler.max-threads", threads);
  config.set("logger.verbosity", caf::atom("quiet"));
  config.set("middleman.heartbeat-interval", caf::timespan{live.heartbeat});
  config.set("middleman.connection-timeout", caf::timespan{live.connection_timeout});
  if (options.enabled()) {
    config.load<caf::openssl::manager>();
    config.openssl_certificate = options.certificate;
    config.openssl_key = options.key;
    config.openssl_cafile = options.ca_file;
    config.openssl_passphrase = options.passphrase;
    tls = true;
  }
  system = std::make_unique<caf::actor_system>(config);
}

network_system::~network_system() = default;

caf::io::middleman_actor network_system::connector() {
  return tls ? system->openssl_manager().actor_handle() : system->middleman().actor_handle();
}

} // namespace mcache::fleet
