// Disk -> RAM load of a safetensors model against a plain sequential read() of the same file, in the
// same run, cold (file dropped from the page cache before each run) and warm. Both read into a freshly
// allocated buffer of the same size, so both pay the same page faults.
//
//   disk_load_bench [--dir DIR] [--size-mib N] [--runs R]

#include "runtime/core/models/model_files.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

// Drops the file from the page cache. Both ways work without root on most file systems; /proc needs root.
std::string drop_cache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  std::ofstream drop{"/proc/sys/vm/drop_caches"};
  if (drop && (drop << "1").flush())
    return "fadvise(DONTNEED) + drop_caches";
  return "fadvise(DONTNEED)";
}

double plain_read(const std::string& path, uint64_t bytes) {
  auto t0 = clock_type::now();
  auto buffer = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  int fd = ::open(path.c_str(), O_RDONLY);
  auto* p = static_cast<char*>(buffer.data_ptr());
  uint64_t done = 0;
  while (done < bytes) {
    auto got = ::read(fd, p + done, std::min<uint64_t>(16 << 20, bytes - done));
    if (got <= 0)
      break;
    done += static_cast<uint64_t>(got);
  }
  ::close(fd);
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double runtime_load(const model_descriptor& d) {
  auto t0 = clock_type::now();
  auto m = d.loader(d);
  auto s = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (m->total_bytes() != d.bytes)
    std::fprintf(stderr, "size mismatch!\n");
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  std::string dir = "bench-data";
  uint64_t mib = 1024;
  int runs = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string{argv[++i]} : std::string{}; };
    if (a == "--dir")
      dir = next();
    else if (a == "--size-mib")
      mib = std::stoull(next());
    else if (a == "--runs")
      runs = std::stoi(next());
    else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--size-mib N] [--runs R]\n", argv[0]);
      return 2;
    }
  }
  std::filesystem::create_directories(dir);
  auto path = dir + "/bench_model.safetensors";
  const int tensors = 64;
  auto per = static_cast<int64_t>((mib << 20) / tensors / 2);  // bf16 elements per tensor
  if (!std::filesystem::exists(path) || std::filesystem::file_size(path) < (mib << 20)) {
    std::printf("writing %llu MiB to %s ...\n", (unsigned long long) mib, path.c_str());
    std::vector<safetensors::tensor_to_write> ts;
    for (int i = 0; i < tensors; ++i)
      ts.push_back({"layer" + std::to_string(i) + ".weight", at::full({per}, 0.5 + i, at::kBFloat16), {}});
    safetensors::write_file(path, ts);
  }
  auto file_bytes = std::filesystem::file_size(path);
  auto read_d = std::get<model_descriptor>(describe_files({"bench", {path}, {}, {}, {}}));
  auto mmap_d = std::get<model_descriptor>(describe_files({"bench", {path}, {}, {}, {}}, {safetensors::read_mode::mmap}));
  std::printf("disk -> RAM: %s, %.2f GiB, %d runs each (median)\n", path.c_str(), file_bytes / 1073741824.0, runs);
  std::string how;
  struct way {
    const char* name;
    std::function<double()> run;
  };
  std::vector<way> ways = {{"plain read() baseline", [&] { return plain_read(path, file_bytes); }},
                           {"mcache load (read)", [&] { return runtime_load(read_d); }},
                           {"mcache load (mmap)", [&] { return runtime_load(mmap_d); }}};
  std::printf("%-24s %12s %12s %12s %12s\n", "", "cold GB/s", "cold ratio", "warm GB/s", "warm ratio");
  std::vector<double> cold(ways.size()), warm(ways.size());
  for (size_t w = 0; w < ways.size(); ++w) {
    std::vector<double> c, h;
    for (int r = 0; r < runs; ++r) {
      how = drop_cache(path);
      c.push_back(ways[w].run());
    }
    ways[w].run();
    for (int r = 0; r < runs; ++r)
      h.push_back(ways[w].run());
    cold[w] = file_bytes / median(c) / 1e9;
    warm[w] = file_bytes / median(h) / 1e9;
    std::printf("%-24s %12.2f %12.2f %12.2f %12.2f\n", ways[w].name, cold[w], cold[w] / cold[0], warm[w],
                warm[w] / warm[0]);
  }
  std::printf("cold runs dropped the page cache with %s. target: mcache load >= 0.8 x baseline, cold and warm: "
              "read %s/%s, mmap %s/%s\n",
              how.c_str(), cold[1] >= 0.8 * cold[0] ? "met" : "MISSED", warm[1] >= 0.8 * warm[0] ? "met" : "MISSED",
              cold[2] >= 0.8 * cold[0] ? "met" : "MISSED", warm[2] >= 0.8 * warm[0] ? "met" : "MISSED");
  return 0;
}
