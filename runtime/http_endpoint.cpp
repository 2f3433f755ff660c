#include "runtime/http_endpoint.hpp"

#include "runtime/metrics.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <thread>

namespace mcache {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct http_endpoint::impl {
  runtime* rt = nullptr;
  http_options options;
  std::atomic<std::size_t> connections{0};  // before io: connections still queued there count down on exit
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::thread thread;

  void accept();
};

namespace {

/// One connection: reads one request within the timeout, answers it, closes.
class connection : public std::enable_shared_from_this<connection> {
public:
  connection(tcp::socket socket, http_endpoint::impl& owner)
    : stream_(std::move(socket)), timer_(stream_.get_executor()), owner_(owner) {
    ++owner_.connections;
  }
  ~connection() { --owner_.connections; }

  void start(bool over_limit) {
    if (over_limit) {
      respond(http::status::service_unavailable, "text/plain", "too many connections\n", 11);
      return;
    }
    parser_.header_limit(static_cast<std::uint32_t>(owner_.options.max_header_bytes));
    parser_.body_limit(0);
    // A timer of our own, not the stream's expiry (which closes the socket): a client that sent part of
    // a request within the timeout is told 408 before it is cut off.
    timer_.expires_after(owner_.options.request_timeout);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec)
        return;  // cancelled: the request arrived
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
    http::async_read(stream_, buffer_, parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

private:
  void on_read(beast::error_code ec) {
    timer_.cancel();
    if (timed_out_) {
      if (buffer_.size() > 0 || parser_.got_some())
        return respond(http::status::request_timeout, "text/plain", "request not received in time\n", 11);
      return close();
    }
    if (ec == http::error::header_limit) {
      // The request line was never parsed whole: it alone passed the limit, so the target did.
      if (parser_.get().target().empty())
        return respond(http::status::uri_too_long, "text/plain", "request target too long\n", 11);
      return respond(http::status::request_header_fields_too_large, "text/plain", "request header too large\n", 11);
    }
    if (ec == http::error::body_limit)
      return respond(http::status::payload_too_large, "text/plain", "no request body is accepted\n", 11);
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset)
      return close();
    if (ec)
      return respond(http::status::bad_request, "text/plain", "malformed request: " + ec.message() + "\n", 11);
    const auto& req = parser_.get();
    auto version = req.version();
    if (req.method() != http::verb::get && req.method() != http::verb::head)
      return respond(http::status::method_not_allowed, "text/plain", "only GET and HEAD\n", version, "GET, HEAD");
    head_only_ = req.method() == http::verb::head;
    auto path = path_of(std::string{req.target()});
    try {
      if (path == "/metrics")
        return respond(http::status::ok, "text/plain; version=0.0.4",
                       prometheus_text(*owner_.rt) + (owner_.options.extra_metrics ? owner_.options.extra_metrics() : ""),
                       version);
      if (path == "/status")
        return respond(http::status::ok, "application/json", owner_.rt->status_json(), version);
      if (path == "/" || path == "/index.html")
        return respond(http::status::ok, "text/html; charset=utf-8", status_page_html(), version);
    } catch (const std::exception& e) {
      return respond(http::status::service_unavailable, "text/plain", std::string{e.what()} + "\n", version);
    }
    respond(http::status::not_found, "text/plain", "no such page: " + path + " (try /, /status or /metrics)\n", version);
  }

  /// The path of a request target: origin form ("/status?x") or absolute form ("http://host/status"),
  /// which a server must accept too (RFC 9112, 3.2.2), without its query.
  static std::string path_of(std::string target) {
    auto scheme = target.find("://");
    if (target.rfind('/', 0) != 0 && scheme != std::string::npos) {
      auto slash = target.find('/', scheme + 3);
      target = slash == std::string::npos ? "/" : target.substr(slash);
    }
    return target.substr(0, target.find('?'));
  }

  /// `allow`: the methods a 405 names (RFC 9110 requires the header there).
  void respond(http::status status, const char* type, std::string body, unsigned version, const char* allow = nullptr) {
    auto res = std::make_shared<http::response<http::string_body>>(status, version);
    res->set(http::field::server, "mcache");
    if (allow)
      res->set(http::field::allow, allow);
    res->set(http::field::content_type, type);
    res->set(http::field::cache_control, "no-store");
    res->keep_alive(false);
    auto size = body.size();
    if (!head_only_)
      res->body() = std::move(body);
    res->content_length(size);
    stream_.expires_after(owner_.options.request_timeout);
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code, std::size_t) { self->close(); });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  bool timed_out_ = false;
  http_endpoint::impl& owner_;
  beast::flat_buffer buffer_;
  http::request_parser<http::empty_body> parser_;
  bool head_only_ = false;
};

} // namespace

void http_endpoint::impl::accept() {
  acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted)
      return;
    if (!ec) {
      auto over = connections.load() >= options.max_connections;
      std::make_shared<connection>(std::move(socket), *this)->start(over);
    }
    accept();
  });
}

http_endpoint::http_endpoint(runtime& rt, http_options options) : impl_(std::make_unique<impl>()) {
  impl_->rt = &rt;
  impl_->options = options;
  beast::error_code ec;
  auto address = asio::ip::make_address(options.address, ec);
  if (ec)
    throw request_error(failure{errc::invalid_argument, "http: '" + options.address + "' is not an IP address"});
  tcp::endpoint at{address, options.port};
  impl_->acceptor.open(at.protocol(), ec);
  if (!ec)
    impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec)
    impl_->acceptor.bind(at, ec);
  if (!ec)
    impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw request_error(failure{errc::invalid_argument, "http: cannot listen on " + options.address + ":"
                                                          + std::to_string(options.port) + ": " + ec.message()});
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
  spdlog::info("mcache: status page at {}", url());
}

http_endpoint::~http_endpoint() {
  asio::post(impl_->io, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->io.stop();
  if (impl_->thread.joinable())
    impl_->thread.join();
}

std::uint16_t http_endpoint::port() const { return impl_->acceptor.local_endpoint().port(); }

std::string http_endpoint::url() const {
  return "http://" + impl_->options.address + ":" + std::to_string(port()) + "/";
}

} // namespace mcache
