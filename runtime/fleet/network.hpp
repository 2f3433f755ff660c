#pragma once
// What a node and a router share about the network: the actor system CAF's middleman runs in, with TLS
// through caf::openssl when certificates are configured (Note [Fleet security], router.hpp).

#include "messages/errc.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman_actor.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace mcache::fleet {

/// Mutual TLS: this end's certificate chain and key, and the CA that a peer's certificate must be signed
/// by. All three or none.
struct tls_options {
  std::string certificate;  // PEM certificate chain of this end
  std::string key;          // PEM private key
  std::string ca_file;      // PEM: the CA(s) that sign the fleet's certificates
  std::string passphrase;   // of the key, if it has one
  bool enabled() const { return !certificate.empty() || !key.empty() || !ca_file.empty(); }
  /// Nothing, or invalid_argument naming the missing, unreadable or unusable file (each is loaded with
  /// OpenSSL as CAF's TLS layer will load it: certificate chain, key with its passphrase, the key matching
  /// the certificate, the CA file), with OpenSSL's reason.
  std::optional<failure> check() const;

private:
  std::optional<failure> check_with_openssl() const;
};

/// 127.0.0.0/8, ::1 or "localhost".
bool is_loopback(const std::string& host);

/// How a silent peer is found out: every connection carries a heartbeat each `heartbeat`, and one that
/// carried nothing for `connection_timeout` is closed, which a router sees as its node lost (a machine
/// that hangs or a network that drops packets sends no FIN). The timeout is measured against what the
/// peer sends: keep it at least 3 times the peers' heartbeat (500 ms by default on both ends).
struct liveness {
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds connection_timeout{3000};
};

/// An actor system with CAF's middleman (and caf::openssl with `tls`), the fleet's types registered.
struct network_system {
  network_system(const tls_options& tls, std::size_t threads, liveness live = {});
  ~network_system();
  caf::actor_system_config config;
  std::unique_ptr<caf::actor_system> system;
  bool tls = false;
  /// The middleman actor that connects and publishes: plain TCP, or TLS.
  caf::io::middleman_actor connector();
};

} // namespace mcache::fleet
