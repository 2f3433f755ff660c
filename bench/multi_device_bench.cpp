// Several devices in one process: two sessions pin a model each at once, on two devices against on one
// device, in the same run. Each device has its own copy stream and copy queue, so copies to two devices
// run side by side while two copies to one device take turns. Target: two devices <= 0.6 x one device
// (ideal 0.5). On the fake accelerator by default (its copies paced at --copy-mb-per-s on the stream's
// thread, as a link would be); `--device cuda` runs it on cuda:0 and cuda:1 where LibTorch sees two GPUs.
//
//   multi_device_bench [--device accelerator|cuda] [--mib N] [--copy-mb-per-s R] [--runs N]

#include "runtime/core/transfer/fake_accelerator.hpp"
#include "runtime/core/transfer/torch_backend.hpp"
#include "runtime/runtime.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

/// Seconds for two sessions, each on its own thread, to pin one model each: on devices `first` and
/// `second` of a fresh runtime (the models already leased, so that only the copies are timed).
double two_pins(const runtime_options& options, bytes_t model_bytes, device_index first, device_index second) {
  runtime rt{options};
  for (auto id : {"a", "b"})
    rt.models().add(synthetic_model(id, std::vector<int64_t>(8, static_cast<int64_t>(model_bytes / 8 / 4))));
  auto sa = rt.open_session("a");
  auto sb = rt.open_session("b");
  auto la = sa.acquire("a");
  auto lb = sb.acquire("b");
  auto start = clock_type::now();
  std::thread other{[&] { sb.pin(lb, second).release(); }};
  sa.pin(la, first).release();
  other.join();
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  std::string kind = "accelerator";
  bytes_t mib = 64;
  double copy_mb_per_s = 400;
  int runs = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--device" && i + 1 < argc)
      kind = argv[++i];
    else if (a == "--mib" && i + 1 < argc)
      mib = std::stoull(argv[++i]);
    else if (a == "--copy-mb-per-s" && i + 1 < argc)
      copy_mb_per_s = std::stod(argv[++i]);
    else if (a == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--device accelerator|cuda] [--mib N] [--copy-mb-per-s R] [--runs N]\n", argv[0]);
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);  // one runtime per measurement: not its start-up line each time
  runtime_options o;
  o.ram_budget_bytes = 4 * mib << 20;
  device_options d;
  d.budget_bytes = 4 * mib << 20;
  if (kind == "cuda") {
    d.kind = device_kind::cuda;
    if (torch_device_count(c10::DeviceType::CUDA) < 2) {
      std::printf("multi_device_bench: LibTorch sees %d CUDA device(s); this needs 2. Not run.\n",
                  torch_device_count(c10::DeviceType::CUDA));
      return 0;
    }
  } else {
    d.kind = device_kind::accelerator;
    fake_accelerator::install({2, 8 * mib << 20, copy_mb_per_s * 1e6});
  }
  for (int index : {0, 1}) {
    d.index = index;
    o.devices.push_back(d);
  }
  const bytes_t model_bytes = mib << 20;
  std::vector<double> one, two;
  for (int r = 0; r < runs; ++r) {
    one.push_back(two_pins(o, model_bytes, 0, 0));
    two.push_back(two_pins(o, model_bytes, 0, 1));
  }
  auto m1 = median(one), m2 = median(two);
  std::printf("%s: two sessions pin a %llu MiB model each at once (median of %d runs%s)\n", kind.c_str(),
              static_cast<unsigned long long>(mib), runs,
              kind == "cuda" ? "" : (", copies paced at " + std::to_string(static_cast<int>(copy_mb_per_s)) + " MB/s").c_str());
  std::printf("both on device 0                 %8.1f ms\n", m1 * 1e3);
  std::printf("one on device 0, one on device 1 %8.1f ms\n", m2 * 1e3);
  std::printf("ratio two devices / one device   %8.2f   (target <= 0.60, ideal 0.50): %s\n", m2 / m1,
              m2 / m1 <= 0.6 ? "met" : "MISSED");
  return 0;
}
