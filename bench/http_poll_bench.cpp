// What one poll of the operators' endpoint costs with 1,000 registered models (issue 10: <= 1 ms), and the
// same for /metrics, against a request for an unknown path (the HTTP round trip alone) in the same run.
// 1,000 models are registered; 300 are resident in RAM, 40 on the device, 10 of them pinned by a session.
//
//   http_poll_bench [polls]

#include "runtime/http_endpoint.hpp"
#include "runtime/runtime.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace mcache;
using tcp = boost::asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

/// One GET over a fresh loopback connection (the endpoint closes after each answer): the bytes received.
std::size_t get(std::uint16_t port, const std::string& path) {
  boost::asio::io_context io;
  tcp::socket s{io};
  s.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  boost::asio::write(s, boost::asio::buffer(req));
  std::size_t total = 0;
  char chunk[65536];
  for (;;) {
    auto n = ::recv(s.native_handle(), chunk, sizeof chunk, 0);
    if (n <= 0)
      return total;
    total += static_cast<std::size_t>(n);
  }
}

double median_us(std::uint16_t port, const std::string& path, int polls, std::size_t& bytes) {
  std::vector<double> t;
  for (int i = 0; i < polls; ++i) {
    auto start = clock_type::now();
    bytes = get(port, path);
    t.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  int polls = argc > 1 ? std::stoi(argv[1]) : 200;
  runtime_options o;
  o.ram_budget_bytes = 512 << 20;
  o.devices = {{device_kind::simulated, 64 << 20, 0, 0}};
  o.check_invariants = false;
  runtime rt{o};
  for (int m = 0; m < 1000; ++m)
    rt.models().add(synthetic_model("model-" + std::to_string(m), {16 * 1024}));  // 64 KiB each
  auto s = rt.open_session("bench");
  std::vector<lease> leases;
  std::vector<pin_handle> pins;
  for (int m = 0; m < 300; ++m) {
    auto l = s.acquire("model-" + std::to_string(m));
    if (m < 40) {
      auto p = s.pin(l, 0);
      if (m < 10)
        pins.push_back(std::move(p));
    }
    if (m < 20)
      leases.push_back(std::move(l));
  }
  http_endpoint http{rt};
  std::size_t bytes = 0;
  median_us(http.port(), "/nope", 20, bytes);  // warm up
  auto base = median_us(http.port(), "/nope", polls, bytes);
  auto status = median_us(http.port(), "/status", polls, bytes);
  auto status_bytes = bytes;
  auto metrics = median_us(http.port(), "/metrics", polls, bytes);
  std::printf("1000 models registered, 300 in RAM, 40 on the device, 10 pinned; %d polls each, median:\n", polls);
  std::printf("  unknown path (the HTTP round trip alone): %8.1f us\n", base);
  std::printf("  /status (%zu bytes):                    %8.1f us  (target <= 1000; %.1fx the round trip)\n",
              status_bytes, status, status / base);
  std::printf("  /metrics:                                 %8.1f us  (%.1fx the round trip)\n", metrics, metrics / base);
  return 0;
}
