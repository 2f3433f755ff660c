// Transfers on a real device (CUDA by default; `--device accelerator` runs it on the fake accelerator),
// each against a baseline measured in the same run:
//   load     RAM->device through `pin`, from pinned host buffers, against a plain pinned
//            copy_(non_blocking) of the same bytes                                     target >= 0.9x
//   offload  of an unpinned model with a kept RAM copy                                  target <= 1 ms
//   stream   a forward pass over a model 4x larger than the device budget, every layer through the pin's
//            staging ring, against the link speed measured by the baseline               target >= 0.9x
//   disk     a safetensors file loaded by an acquire into pinned buffers, against a plain read() of
//            the same file into pageable memory (both warm: the file is in the page cache)  target >= 0.8x
// Writes the figures as JSON with --json FILE (scripts/gpu-check.sh collects them).
//
//   gpu_transfer_bench [--device cuda|accelerator] [--mib N] [--layers N] [--json FILE]

#include "runtime/core/models/host_memory.hpp"
#include "runtime/core/models/model_files.hpp"
#include "runtime/core/models/safetensors.hpp"
#include "runtime/core/transfer/torch_backend.hpp"
#include "runtime/runtime.hpp"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#if defined(MCACHE_WITH_FAKE_ACCELERATOR)
#include "runtime/core/transfer/fake_accelerator.hpp"
#endif

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {
double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}
} // namespace

int main(int argc, char** argv) {
  std::string kind = "cuda", json;
  int64_t mib = 2048;
  int layers = 64;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string{argv[++i]} : std::string{}; };
    if (a == "--device")
      kind = next();
    else if (a == "--mib")
      mib = std::stoll(next());
    else if (a == "--layers")
      layers = std::stoi(next());
    else if (a == "--json")
      json = next();
    else {
      std::fprintf(stderr, "usage: %s [--device cuda|accelerator] [--mib N] [--layers N] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  auto type = kind == "cuda" ? c10::DeviceType::CUDA : c10::DeviceType::PrivateUse1;
#if defined(MCACHE_WITH_FAKE_ACCELERATOR)
  if (type == c10::DeviceType::PrivateUse1)
    fake_accelerator::install({1, static_cast<uint64_t>(mib) << 21, 0});
#endif
  if (torch_device_count(type) == 0) {
    std::printf("gpu_transfer_bench: LibTorch sees no %s device here; nothing measured\n", kind.c_str());
    return 0;
  }
  auto device = c10::Device(type, 0);
  const bytes_t total = static_cast<bytes_t>(mib) << 20;
  const int64_t layer_floats = static_cast<int64_t>(total / static_cast<bytes_t>(layers) / 4);
  const bytes_t layer_bytes = static_cast<bytes_t>(layer_floats) * 4;

  // Baseline: a plain pinned copy_(non_blocking) of the same bytes on a side stream.
  c10::impl::VirtualGuardImpl guard{type};
  auto stream = guard.getStreamFromGlobalPool(device);
  auto pinned_memory = std::make_shared<host_memory>(total);
  auto host = pinned_memory->allocate(total);
  auto on_device = at::empty({static_cast<int64_t>(total)}, at::TensorOptions().dtype(at::kByte).device(device));
  double plain_s = 1e30;
  for (int r = 0; r < 3; ++r) {
    c10::StreamGuard on{stream};
    auto t = clock_type::now();
    on_device.copy_(host, /*non_blocking=*/true);
    guard.synchronizeStream(stream);
    plain_s = std::min(plain_s, seconds_since(t));
  }
  on_device = at::Tensor();
  auto link_gbs = static_cast<double>(total) / plain_s / 1e9;

  // The runtime: a model of `layers` layers whose loader reads into the runtime's (pinned) buffers.
  runtime_options o;
  o.ram_budget_bytes = 2 * total + (64 << 20);
  o.pinned_budget_bytes = o.ram_budget_bytes;
  device_options d;
  d.kind = kind == "cuda" ? device_kind::cuda : device_kind::accelerator;
  d.budget_bytes = total + (256 << 20);
  device_options small = d;
  small.budget_bytes = total / 4;
  small.index = 0;
  o.devices = {d, small};
  runtime rt{o};
  auto make_model = [&](const std::string& id) {
    model_descriptor m;
    m.id = id;
    m.bytes = layer_bytes * static_cast<bytes_t>(layers);
    m.loader = [layers, layer_floats, layer_bytes](const model_descriptor& self) {
      auto model = std::make_shared<host_model>();
      model->id = self.id;
      for (int l = 0; l < layers; ++l) {
        auto buffer = host_memory::buffer(layer_bytes);
        buffer.fill_(static_cast<uint8_t>(l));
        model->tensors.push_back({"layer" + std::to_string(l), buffer.view(at::kFloat).view({layer_floats})});
      }
      return std::shared_ptr<const host_model>(model);
    };
    return m;
  };
  rt.models().add(make_model("model"));
  auto s = rt.open_session();
  auto lease = s.acquire("model");  // the load from "disk" is not timed
  auto t = clock_type::now();
  auto pin = s.pin(lease, 0);
  auto pin_s = seconds_since(t);
  pin.release();
  t = clock_type::now();
  s.offload(0, "model");
  auto offload_s = seconds_since(t);

  // Streaming: device 1 holds a quarter of the model; every layer goes through the staging ring.
  auto partial = s.pin(lease, 1);
  double stream_s = 0;
  bytes_t streamed = 0;
  {
    c10::DeviceGuard on_device_guard{device};
    auto consumer = guard.getStreamFromGlobalPool(device);
    c10::StreamGuard on{consumer};
    t = clock_type::now();
    auto layers_stream = partial.stream();
    for (size_t l = 0; l < layers_stream.size(); ++l) {
      auto w = layers_stream.get(l);
      if (!layers_stream.resident(l))
        streamed += layer_bytes;
    }
    guard.synchronizeStream(consumer);
    stream_s = seconds_since(t);
  }
  // Disk -> pinned RAM: a file of the same layers, loaded by an acquire, against a plain read().
  auto path = (std::filesystem::temp_directory_path() / "mcache-gpu-bench.safetensors").string();
  {
    std::vector<safetensors::tensor_to_write> ts;
    for (int l = 0; l < layers; ++l)
      ts.push_back({"layer" + std::to_string(l), at::full({layer_floats}, static_cast<float>(l)), {}});
    safetensors::write_file(path, ts);
  }
  auto plain_read = [&] {
    auto sink = at::empty({static_cast<int64_t>(std::filesystem::file_size(path))}, at::kByte);
    auto t0 = clock_type::now();
    int fd = ::open(path.c_str(), O_RDONLY);
    auto* p = static_cast<char*>(sink.data_ptr());
    size_t done = 0, n = static_cast<size_t>(sink.numel());
    while (done < n) {
      auto got = ::read(fd, p + done, std::min<size_t>(16 << 20, n - done));
      if (got <= 0)
        break;
      done += static_cast<size_t>(got);
    }
    ::close(fd);
    return seconds_since(t0);
  };
  plain_read();  // warm the page cache
  auto read_s = plain_read();
  file_model_spec spec;
  spec.id = "from_disk";
  spec.files = {path};
  auto file_models = describe_files(spec);
  double disk_s = 0;
  if (succeeded(file_models) && !register_all(rt.models(), {std::get<model_descriptor>(file_models)})) {
    s.trim_ram();  // room for it
    t = clock_type::now();
    auto loaded = s.acquire("from_disk");
    disk_s = seconds_since(t);
  }
  std::filesystem::remove(path);
  auto read_gbs = static_cast<double>(total) / read_s / 1e9;
  auto disk_gbs = disk_s > 0 ? static_cast<double>(total) / disk_s / 1e9 : 0;

  auto stats = rt.stats();
  auto pin_gbs = static_cast<double>(total) / pin_s / 1e9;
  auto stream_gbs = static_cast<double>(streamed) / stream_s / 1e9;
  std::printf("%s: %lld MiB in %d layers; pinned host buffers: %llu B pinned, %llu fallbacks\n",
              device.str().c_str(), static_cast<long long>(mib), layers,
              static_cast<unsigned long long>(stats.ram.pinned_peak_bytes),
              static_cast<unsigned long long>(stats.ram.pageable_fallbacks));
  std::printf("plain pinned copy_     %8.2f GB/s (baseline, the link)\n", link_gbs);
  std::printf("load through pin       %8.2f GB/s   ratio %.2f (target >= 0.90): %s\n", pin_gbs, pin_gbs / link_gbs,
              pin_gbs / link_gbs >= 0.9 ? "met" : "MISSED");
  std::printf("offload, kept RAM copy %8.3f ms     (target <= 1 ms): %s\n", offload_s * 1e3,
              offload_s <= 1e-3 ? "met" : "MISSED");
  std::printf("streamed forward       %8.2f GB/s   ratio %.2f to the link (target >= 0.90): %s\n", stream_gbs,
              stream_gbs / link_gbs, stream_gbs / link_gbs >= 0.9 ? "met" : "MISSED");
  std::printf("disk -> pinned RAM     %8.2f GB/s   ratio %.2f to plain read() at %.2f GB/s (target >= 0.80): %s\n",
              disk_gbs, disk_gbs / read_gbs, read_gbs, disk_gbs / read_gbs >= 0.8 ? "met" : "MISSED");
  if (!json.empty())
    std::ofstream{json} << "{\"device\": \"" << device.str() << "\", \"mib\": " << mib << ", \"link_gbs\": " << link_gbs
                        << ", \"pin_gbs\": " << pin_gbs << ", \"pin_ratio\": " << pin_gbs / link_gbs
                        << ", \"offload_ms\": " << offload_s * 1e3 << ", \"stream_gbs\": " << stream_gbs
                        << ", \"stream_ratio\": " << stream_gbs / link_gbs << ", \"disk_gbs\": " << disk_gbs
                        << ", \"disk_ratio\": " << disk_gbs / read_gbs
                        << ", \"pageable_fallbacks\": " << stats.ram.pageable_fallbacks << "}\n";
  return 0;
}
