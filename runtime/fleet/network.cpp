#include "runtime/fleet/network.hpp"

#include "messages/errors.hpp"
#include "messages/fleet.hpp"

#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <cstring>
#include <fstream>
#include <memory>

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
  if (auto f = need(ca_file, "CA file"))
    return f;
  return check_with_openssl();
}

// Readable is not usable: CAF's TLS layer loads the files only when the first connection comes, and a
// file it cannot use then throws on its network thread and ends the process. So they are loaded here, at
// start, the way it will load them, and a file that does not load is refused with OpenSSL's reason.
std::optional<failure> tls_options::check_with_openssl() const {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{SSL_CTX_new(TLS_method()), &SSL_CTX_free};
  auto refuse = [](const std::string& what) {
    char reason[256] = "no reason given";
    if (auto code = ERR_get_error())
      ERR_error_string_n(code, reason, sizeof reason);
    ERR_clear_error();
    return failure{errc::invalid_argument, what + " (" + reason + ")"};
  };
  if (!ctx)
    return refuse("TLS: OpenSSL could not make a context");
  std::string pass = passphrase;
  SSL_CTX_set_default_passwd_cb_userdata(ctx.get(), pass.data());
  SSL_CTX_set_default_passwd_cb(ctx.get(), [](char* buf, int size, int, void* user) {
    auto n = static_cast<int>(std::strlen(static_cast<const char*>(user)));
    if (n >= size)
      return 0;
    std::memcpy(buf, user, static_cast<std::size_t>(n) + 1);
    return n;
  });
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), certificate.c_str()) != 1)
    return refuse("TLS certificate '" + certificate + "' is not a usable PEM certificate chain");
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)  // OpenSSL 3 checks it here
      return refuse("TLS key '" + key + "' does not belong to certificate '" + certificate + "'");
    return refuse("TLS key '" + key + "' is not a usable PEM private key"
                  + std::string{passphrase.empty() ? " (is it encrypted? then give its passphrase)" : " with that passphrase"});
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return refuse("TLS key '" + key + "' does not belong to certificate '" + certificate + "'");
  if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1)
    return refuse("TLS CA file '" + ca_file + "' holds no usable PEM certificate");
  return std::nullopt;
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
