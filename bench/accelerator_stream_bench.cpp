// Streaming on the fake accelerator (Note [Fake accelerator]): a forward pass whose layers all stream
// through a pin's two staging slots, with copies and fake kernels of equal length, against the same pass
// run without overlap (copy a layer, wait, run its kernel, wait, next layer), in the same run.
// Target: overlapped time <= 0.6 x the serial time (ideal: 0.5 + 1/(2 layers)).
//
//   accelerator_stream_bench [--layers N] [--layer-kib K] [--copy-mb-per-s R] [--runs N]

#include "runtime/core/transfer/fake_accelerator.hpp"
#include "runtime/core/transfer/tensor_stream.hpp"
#include "runtime/core/transfer/torch_backend.hpp"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int layers = 16, runs = 3;
  int64_t layer_kib = 1024;
  double copy_mb_per_s = 200;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&] { return i + 1 < argc ? std::stod(argv[++i]) : 0.0; };
    if (a == "--layers")
      layers = static_cast<int>(value());
    else if (a == "--layer-kib")
      layer_kib = static_cast<int64_t>(value());
    else if (a == "--copy-mb-per-s")
      copy_mb_per_s = value();
    else if (a == "--runs")
      runs = static_cast<int>(value());
    else {
      std::fprintf(stderr, "usage: %s [--layers N] [--layer-kib K] [--copy-mb-per-s R] [--runs N]\n", argv[0]);
      return 2;
    }
  }
  auto layer_bytes = layer_kib * 1024;
  fake_accelerator::install({1, 1ull << 32, copy_mb_per_s * 1e6});
  auto copy_us = static_cast<uint64_t>(static_cast<double>(layer_bytes) / (copy_mb_per_s * 1e6) * 1e6);
  auto kernel_us = copy_us;  // kernels as long as copies
  auto device = fake_accelerator::device(0);
  std::shared_ptr<device_backend> backend = make_torch_backend(device);
  auto host = std::make_shared<host_model>();
  for (int l = 0; l < layers; ++l)
    host->tensors.push_back({"l" + std::to_string(l), at::full({layer_bytes / 4}, static_cast<float>(l))});
  device_pin pin;
  pin.view = std::make_shared<device_model>(device_model{std::vector<named_tensor>(static_cast<size_t>(layers)), 0});
  pin.host = host;
  pin.backend = backend;
  pin.staging_slots = 2;
  pin.staging_bytes = 2 * static_cast<bytes_t>(layer_bytes);
  c10::impl::VirtualGuardImpl guard{device.type()};
  auto consumer = guard.getStreamFromGlobalPool(device);
  auto copier = guard.getStreamFromGlobalPool(device);
  auto ring = std::make_shared<staging_ring>(backend, 2, static_cast<bytes_t>(layer_bytes));

  auto overlapped = [&] {
    auto start = clock_type::now();
    {
      c10::StreamGuard on_consumer{consumer};
      tensor_stream stream{pin, ring};
      for (int l = 0; l < layers; ++l) {
        auto t = stream.get(static_cast<size_t>(l));
        fake_accelerator::launch(consumer, [t] { (void)t.data_ptr(); }, kernel_us);
      }
    }
    guard.synchronizeStream(consumer);
    return std::chrono::duration<double>(clock_type::now() - start).count();
  };
  auto buffer = at::empty({layer_bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  auto serial = [&] {
    auto start = clock_type::now();
    for (int l = 0; l < layers; ++l) {
      {
        c10::StreamGuard on_copier{copier};
        auto dst = at::empty({layer_bytes / 4}, at::TensorOptions().dtype(at::kFloat).device(device));
        dst.copy_(host->tensors[static_cast<size_t>(l)].tensor, /*non_blocking=*/true);
        guard.synchronizeStream(copier);
        fake_accelerator::launch(consumer, [dst] { (void)dst.data_ptr(); }, kernel_us);
      }
      guard.synchronizeStream(consumer);
    }
    return std::chrono::duration<double>(clock_type::now() - start).count();
  };
  std::vector<double> o, s;
  overlapped();  // warm: the ring's slots are allocated once
  for (int r = 0; r < runs; ++r) {
    o.push_back(overlapped());
    s.push_back(serial());
  }
  std::sort(o.begin(), o.end());
  std::sort(s.begin(), s.end());
  auto mo = o[o.size() / 2], ms = s[s.size() / 2];
  std::printf("fake accelerator: %d layers of %lld KiB, copy %llu us and kernel %llu us each, median of %d runs\n",
              layers, static_cast<long long>(layer_kib), static_cast<unsigned long long>(copy_us),
              static_cast<unsigned long long>(kernel_us), runs);
  std::printf("serial (copy, then kernel)   %8.1f ms\n", ms * 1e3);
  std::printf("streamed (overlapped)        %8.1f ms\n", mo * 1e3);
  std::printf("ratio streamed/serial        %8.2f   (target <= 0.60, ideal %.2f): %s\n", mo / ms,
              0.5 + 0.5 / layers, mo / ms <= 0.6 ? "met" : "MISSED");
  return 0;
}
