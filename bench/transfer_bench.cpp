// Moving bytes to a device, against a plain copy of the same bytes in the same run:
//   load     RAM -> device through `pin` (a fresh copy each run) vs a plain clone of the same tensors
//   offload  dropping an unpinned resident model with a kept RAM copy (no copy back)
//   forward  a stack of linear layers computed fully resident vs fully streamed through the staging ring
// On a machine without a GPU the device is simulated (its copies are memcpy into host memory), so the
// figures are memcpy-relative; on a GPU the same bench measures the real link.
//
//   transfer_bench [--mib N] [--runs R]

#include "runtime/runtime.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

model_descriptor layers_model(const std::string& id, int layers, int64_t width) {
  std::vector<int64_t> numels(static_cast<size_t>(layers), width * width);
  return synthetic_model(id, numels);
}

} // namespace

int main(int argc, char** argv) {
  int64_t mib = 512;
  int runs = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--mib" && i + 1 < argc)
      mib = std::stoll(argv[++i]);
    else if (a == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--mib N] [--runs R]\n", argv[0]);
      return 2;
    }
  }
  const bytes_t model_bytes = static_cast<bytes_t>(mib) << 20;
  const int layers = 64;
  const int64_t width = static_cast<int64_t>(std::sqrt(static_cast<double>(model_bytes / layers / 4)));
  const bytes_t real_bytes = static_cast<bytes_t>(layers) * width * width * 4;

  runtime_options o;
  o.ram_budget_bytes = 3 * real_bytes;
  o.devices = {{device_kind::simulated, 2 * real_bytes, 0, 0},
               {device_kind::simulated, 2 * static_cast<bytes_t>(width * width * 4) + (1 << 20), 0, 0}};
  runtime rt{o};
  rt.models().add(layers_model("model", layers, width));
  auto s = rt.open_session();
  auto lease = s.acquire("model");
  std::printf("transfer bench on %s: model of %d layers of %lldx%lld float32 = %.0f MiB, %d runs (median)\n",
              "simulated devices (memcpy into host memory)", layers, (long long) width, (long long) width,
              real_bytes / 1048576.0, runs);

  // Baseline: a plain copy of the same tensors.
  std::vector<double> base;
  for (int r = 0; r < runs; ++r) {
    auto t0 = clock_type::now();
    std::vector<at::Tensor> copies;
    for (const auto& t : lease.host().tensors)
      copies.push_back(t.tensor.clone());
    base.push_back(seconds_since(t0));
  }
  // Load through pin: offload first so every run copies.
  std::vector<double> load, offload;
  for (int r = 0; r < runs; ++r) {
    s.offload(0);
    auto t0 = clock_type::now();
    {
      auto pin = s.pin(lease, 0);
      load.push_back(seconds_since(t0));
    }
    auto t1 = clock_type::now();
    s.offload(0, "model");
    offload.push_back(seconds_since(t1));
  }
  auto gbps = [&](double sec) { return real_bytes / sec / 1e9; };
  std::printf("\n%-36s %10s %10s\n", "", "GB/s", "ratio");
  std::printf("%-36s %10.2f %10.2f\n", "plain clone of the tensors (baseline)", gbps(median(base)), 1.0);
  std::printf("%-36s %10.2f %10.2f   target >= 0.9\n", "RAM -> device through pin", gbps(median(load)),
              median(base) / median(load));
  std::printf("offload of the unpinned resident model, kept RAM copy: %.3f ms (target <= 1 ms)\n",
              median(offload) * 1e3);

  // Forward: resident on device 0 vs streamed through device 1's staging ring.
  auto x0 = at::ones({width}) / width;
  auto forward = [&](const pin_handle& pin) {
    auto stream = pin.stream();
    auto x = x0;
    for (size_t i = 0; i < stream.size(); ++i)
      x = at::relu(at::matmul(stream.get(i).view({width, width}), x));
    return x;
  };
  std::vector<double> resident_s, streamed_s;
  at::Tensor a, b;
  {
    auto pin = s.pin(lease, 0);
    for (int r = 0; r < runs; ++r) {
      auto t0 = clock_type::now();
      a = forward(pin);
      resident_s.push_back(seconds_since(t0));
    }
  }
  {
    auto pin = s.pin(lease, 1);
    std::printf("device 1 holds %.1f MiB of the model; the rest streams\n", pin.resident_bytes() / 1048576.0);
    for (int r = 0; r < runs; ++r) {
      auto t0 = clock_type::now();
      b = forward(pin);
      streamed_s.push_back(seconds_since(t0));
    }
  }
  std::printf("forward pass: resident %.1f ms, fully streamed %.1f ms (%.2fx); streamed at %.2f GB/s = %.2f x the "
              "baseline copy; outputs equal: %s\n",
              median(resident_s) * 1e3, median(streamed_s) * 1e3, median(streamed_s) / median(resident_s),
              gbps(median(streamed_s)), median(base) / median(streamed_s), a.equal(b) ? "yes" : "NO");
  auto st = rt.stats();
  std::printf("device 0: %llu copies, %.2f GB/s over all copies, last %.2f GB/s; device 1 streamed %.0f MiB\n",
              (unsigned long long) st.devices[0].loads,
              st.devices[0].copy_ns ? st.devices[0].bytes_copied_in / (double) st.devices[0].copy_ns : 0.0,
              st.devices[0].last_copy_ns ? st.devices[0].last_copy_bytes / (double) st.devices[0].last_copy_ns : 0.0,
              st.devices[1].streamed_bytes / 1048576.0);
  return 0;
}
