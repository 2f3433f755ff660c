#pragma once
// The operators' HTTP endpoint (Boost.Beast), off unless an embedder starts one, on loopback by default:
//   GET /metrics  the Prometheus text (runtime/metrics.hpp)
//   GET /status   JSON: every tier's budget and use, every model's state and bytes, holders by name and
//                 for how long, waits
//   GET /         a self-contained status page (no external assets) that draws each tier as a bar of its
//                 models and refreshes itself from /status
// It runs on a thread of its own and asks the actors only when polled, so it costs them nothing when
// nobody polls. Bad requests get HTTP errors and never hold anyone up: unknown paths 404, methods other
// than GET/HEAD 405, headers over the limit 431, a body 413, malformed requests 400, a client that does
// not send its request within the timeout is disconnected (408 if it sent part of it), and connections
// over the limit get 503.

#include "runtime/runtime.hpp"

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>

namespace mcache {

struct http_options {
  std::string address = "127.0.0.1";  // loopback unless told otherwise
  std::uint16_t port = 0;             // 0: any free port (see `port()`)
  std::size_t max_header_bytes = 8 * 1024;
  std::chrono::milliseconds request_timeout{5000};  // to receive a whole request
  std::size_t max_connections = 64;
  /// More Prometheus text appended to /metrics, asked for on each poll on the endpoint's thread (a
  /// fleet node's job counters: fleet::node::metrics_text). It may throw: the poll then gets 500.
  std::function<std::string()> extra_metrics;
};

class http_endpoint {
public:
  /// Listens at once. Throws request_error (invalid_argument) if the address is bad or the port is taken.
  http_endpoint(runtime& rt, http_options options = {});
  /// Stops listening and closes every connection.
  ~http_endpoint();
  http_endpoint(const http_endpoint&) = delete;
  http_endpoint& operator=(const http_endpoint&) = delete;

  std::uint16_t port() const;
  /// "http://127.0.0.1:PORT/"
  std::string url() const;

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

/// The status page itself (what GET / serves).
const std::string& status_page_html();

} // namespace mcache
