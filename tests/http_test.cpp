// The operators' endpoint over real sockets on loopback, every wait bounded (runtime/http_endpoint.hpp).

#include "runtime/http_endpoint.hpp"
#include "runtime/metrics.hpp"
#include "runtime/runtime.hpp"

#include "support/catch.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>

#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;
using tcp = boost::asio::ip::tcp;

namespace {

runtime_options small() {
  runtime_options o;
  o.ram_budget_bytes = 8 << 20;
  o.devices = {{device_kind::simulated, 4 << 20, 0, 0}};
  o.check_invariants = true;
  return o;
}

/// A client socket connected to the endpoint, whose reads give up after `timeout`.
struct client {
  boost::asio::io_context io;
  tcp::socket socket{io};
  client(std::uint16_t port, std::chrono::milliseconds timeout = 3000ms) {
    socket.connect({boost::asio::ip::make_address("127.0.0.1"), port});
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void send(const std::string& bytes) { boost::asio::write(socket, boost::asio::buffer(bytes)); }
  /// Everything until the server closes (or the read timeout).
  std::string receive() {
    std::string out;
    char chunk[4096];
    for (;;) {
      auto n = ::recv(socket.native_handle(), chunk, sizeof chunk, 0);
      if (n <= 0)
        return out;
      out.append(chunk, static_cast<size_t>(n));
    }
  }
};

std::string get(std::uint16_t port, const std::string& path, const std::string& method = "GET") {
  client c{port};
  c.send(method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  return c.receive();
}

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0)
    return 0;
  return std::stoi(response.substr(9, 3));
}

std::string body_of(const std::string& response) {
  auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string{} : response.substr(at + 4);
}

} // namespace

TEST_CASE("the endpoint serves metrics, the status as JSON with holders by name, and the page") {
  runtime rt{small()};
  rt.models().add(synthetic_model("vae", {1 << 16}));
  http_endpoint http{rt};
  auto s = rt.open_session("worker-3");
  auto lease = s.acquire("vae");
  auto pin = s.pin(lease, 0);

  auto metrics = get(http.port(), "/metrics");
  CHECK(status_of(metrics) == 200);
  CHECK(body_of(metrics).find("mcache_ram_budget_bytes 8388608") != std::string::npos);

  auto status = get(http.port(), "/status");
  REQUIRE(status_of(status) == 200);
  CHECK(status.find("application/json") != std::string::npos);
  auto doc = nlohmann::json::parse(body_of(status));
  CHECK(doc["ram"]["budget_bytes"] == 8 << 20);
  REQUIRE(doc["ram"]["models"].size() == 1);
  const auto& ram_vae = doc["ram"]["models"][0];
  CHECK(ram_vae["model"] == "vae");
  CHECK(ram_vae["state"] == "resident");
  std::set<std::string> ram_holders;
  for (const auto& h : ram_vae["holders"])
    ram_holders.insert(h["holder"].get<std::string>());
  CHECK(ram_holders == std::set<std::string>{"worker-3", "device 0"});  // the session's lease and the pin's
  CHECK(doc["devices"][0]["torch_device"] == "cpu");  // a simulated device's copies are host tensors
  const auto& dev_vae = doc["devices"][0]["models"][0];
  CHECK(dev_vae["state"] == "resident");
  CHECK(dev_vae["bytes"] == (1 << 18));
  REQUIRE(dev_vae["holders"].size() == 1);
  CHECK(dev_vae["holders"][0]["holder"] == "worker-3");
  CHECK(dev_vae["holders"][0]["held_s"].get<double>() >= 0);

  auto page = get(http.port(), "/");
  CHECK(status_of(page) == 200);
  CHECK(body_of(page).find("<title>mcache status</title>") != std::string::npos);
  CHECK(body_of(page).find("://") == std::string::npos);  // self-contained: no external assets
  auto head = get(http.port(), "/status", "HEAD");
  CHECK(status_of(head) == 200);
  CHECK(body_of(head).empty());
}

TEST_CASE("the status's levels add up on every poll while pins come and go, and it lists every metric") {
  runtime rt{small()};
  for (int i = 0; i < 4; ++i)
    rt.models().add(synthetic_model("m" + std::to_string(i), {1 << 16, 1 << 15}));
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w)
    workers.emplace_back([&, w] {
      auto s = rt.open_session("worker-" + std::to_string(w));
      for (int i = 0; !stop; ++i) {
        auto lease = s.acquire("m" + std::to_string((i + w) % 4));
        auto pin = s.pin(lease, 0, 4096 * (1 + i % 3));
        if (i % 5 == 0)
          s.offload(0);
      }
    });
  int polls = 0;
  for (; polls < 300; ++polls) {
    auto doc = nlohmann::json::parse(rt.status_json());
    auto sum = [](const nlohmann::json& tier) {
      uint64_t bytes = 0;
      for (const auto& m : tier["models"])
        bytes += m["bytes"].get<uint64_t>();
      return bytes;
    };
    const auto& ram = doc["ram"];
    const auto& dev = doc["devices"][0];
    auto ram_adds_up = ram["used_bytes"].get<uint64_t>() == sum(ram);
    auto dev_adds_up = dev["used_bytes"].get<uint64_t>() == sum(dev) + dev["working_bytes"].get<uint64_t>();
    CHECK(ram_adds_up);
    CHECK(dev_adds_up);
    CHECK(ram["leased_bytes"].get<uint64_t>() <= ram["used_bytes"].get<uint64_t>());
    CHECK(dev["pinned_bytes"].get<uint64_t>() <= dev["used_bytes"].get<uint64_t>());
    if (!ram_adds_up || !dev_adds_up)
      break;
  }
  stop = true;
  for (auto& t : workers)
    t.join();
  CHECK(polls == 300);
  auto doc = nlohmann::json::parse(rt.status_json());
  auto st = rt.stats();
  CHECK(doc["ram"]["metrics"]["loads_total"] == st.ram.loads);
  CHECK(doc["ram"]["metrics"]["loads_stopped_total"] == st.ram.loads_stopped);
  CHECK(doc["ram"]["metrics"]["peak_used_bytes"] == st.ram.peak_used_bytes);
  CHECK(doc["devices"][0]["metrics"]["copied_in_bytes_total"] == st.devices[0].bytes_copied_in);
  CHECK(doc["cpu"]["metrics"].contains("pins_active"));
  CHECK(doc["ram"]["metrics"].size() == metric_values(st.ram).size());
}

TEST_CASE("an embedder's extra metrics follow the runtime's on /metrics") {
  runtime rt{small()};
  http_options o;
  int polls = 0;
  o.extra_metrics = [&polls] { return "my_jobs_total " + std::to_string(++polls) + "\n"; };
  http_endpoint http{rt, o};
  auto first = body_of(get(http.port(), "/metrics"));
  CHECK(first.find("mcache_ram_budget_bytes 8388608\n") != std::string::npos);
  CHECK(first.find("my_jobs_total 1\n") != std::string::npos);
  CHECK(body_of(get(http.port(), "/metrics")).find("my_jobs_total 2\n") != std::string::npos);  // asked per poll
}

TEST_CASE("a holder named with bytes that are not UTF-8 cannot make /status fail") {
  runtime rt{small()};
  rt.models().add(synthetic_model("vae", {1 << 16}));
  http_endpoint http{rt};
  auto s = rt.open_session("caf\xe9");  // session names are the caller's, unchecked
  auto lease = s.acquire("vae");
  auto status = get(http.port(), "/status");
  REQUIRE(status_of(status) == 200);  // was 503: the JSON writer threw on the name
  auto doc = nlohmann::json::parse(body_of(status));
  CHECK(doc["ram"]["models"][0]["holders"][0]["holder"] == "caf\xef\xbf\xbd");  // U+FFFD in its place
}

TEST_CASE("bad requests get HTTP errors: unknown paths, other methods, huge headers, bodies, garbage") {
  runtime rt{small()};
  http_endpoint http{rt};
  CHECK(status_of(get(http.port(), "/nope")) == 404);
  auto refused = get(http.port(), "/status", "DELETE");
  CHECK(status_of(refused) == 405);
  CHECK(refused.find("Allow: GET, HEAD\r\n") != std::string::npos);  // RFC 9110 asks a 405 to say what is
  CHECK(status_of(get(http.port(), "http://127.0.0.1/status")) == 200);  // absolute form (RFC 9112, 3.2.2)
  CHECK(status_of(get(http.port(), "http://127.0.0.1")) == 200);         // the page
  CHECK(status_of(get(http.port(), "http://127.0.0.1/nope?x=1")) == 404);
  {
    client c{http.port()};
    c.send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
    CHECK(status_of(c.receive()) == 431);
  }
  {
    client c{http.port()};
    c.send("GET /" + std::string(20000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(status_of(c.receive()) == 414);  // the target, not a header field, is too long
  }
  {
    client c{http.port()};
    c.send("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    CHECK(status_of(c.receive()) == 413);
  }
  {
    client c{http.port()};
    c.send("NOT HTTP AT ALL\r\n\r\n");
    CHECK(status_of(c.receive()) == 400);
  }
}

TEST_CASE("a slow client is cut off at the timeout and holds nobody else up") {
  runtime rt{small()};
  http_options o;
  o.request_timeout = 300ms;
  http_endpoint http{rt, o};
  client slow{http.port()};
  slow.send("GET /status HTTP/1.1\r\nHost: x\r\n");  // and never the end of its headers
  auto start = std::chrono::steady_clock::now();
  CHECK(status_of(get(http.port(), "/status")) == 200);  // served meanwhile
  CHECK(std::chrono::steady_clock::now() - start < 250ms);
  CHECK(status_of(slow.receive()) == 408);
  CHECK(std::chrono::steady_clock::now() - start < 2s);
}

TEST_CASE("connections over the limit get 503 and the endpoint recovers") {
  runtime rt{small()};
  http_options o;
  o.max_connections = 1;
  o.request_timeout = 300ms;
  http_endpoint http{rt, o};
  client first{http.port()};
  first.send("GET / HTTP/1.1\r\n");  // holds the only connection until its timeout
  std::this_thread::sleep_for(50ms);
  CHECK(status_of(get(http.port(), "/status")) == 503);
  first.receive();
  std::this_thread::sleep_for(50ms);
  CHECK(status_of(get(http.port(), "/status")) == 200);
}

TEST_CASE("a bad address or a taken port is refused at start with the reason") {
  runtime rt{small()};
  http_options bad;
  bad.address = "not-an-address";
  CHECK_THROWS_AS(http_endpoint(rt, bad), request_error);
  http_endpoint first{rt};
  http_options same;
  same.port = first.port();
  CHECK_THROWS_WITH(http_endpoint(rt, same), Catch::Contains("cannot listen"));
}
