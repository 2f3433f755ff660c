// The safetensors parser, validator, loader and writer.

#include "runtime/core/models/safetensors.hpp"

#include "runtime/core/models/catalog.hpp"

#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <ATen/ATen.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <sys/wait.h>
#include <unistd.h>

using namespace mcache;
using namespace mcache::safetensors;
using mcache::test::temp_dir;

namespace {

/// Writes a file from a raw header text and data bytes; `length` overrides the declared header length.
void raw_file(const std::string& path, const std::string& header, const std::string& data,
              std::optional<uint64_t> length = std::nullopt) {
  std::ofstream out{path, std::ios::binary};
  uint64_t n = length ? *length : header.size();
  for (int i = 0; i < 8; ++i)
    out.put(static_cast<char>(n >> (8 * i)));
  out << header << data;
}

failure bad_layout(const std::string& path) {
  auto r = read_layout(path);
  REQUIRE_FALSE(succeeded(r));
  return std::get<failure>(r);
}

std::vector<uint8_t> bytes_of(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

} // namespace

TEST_CASE("tensors of every dtype survive a write and a load bit for bit") {
  temp_dir dir;
  auto path = dir.file("all.safetensors");
  std::vector<tensor_to_write> in = {
    {"f64", at::randn({3, 5}, at::kDouble), {}},
    {"f32", at::randn({7}, at::kFloat), {}},
    {"f16", at::randn({2, 3}).to(at::kHalf), {}},
    {"bf16", at::randn({4, 2}).to(at::kBFloat16), {}},
    {"i64", at::randint(-1000000, 1000000, {6}, at::kLong), {}},
    {"i32", at::randint(-100000, 100000, {6}, at::kInt), {}},
    {"i16", at::randint(-30000, 30000, {5}, at::kShort), {}},
    {"i8", at::randint(-128, 127, {9}, at::kChar), {}},
    {"u8", at::randint(0, 255, {9}, at::kByte), {}},
    {"bool", at::randint(0, 2, {11}, at::kByte).to(at::kBool), {}},
    {"f8_e4m3", at::randint(0, 255, {3, 3}, at::kByte), dtype::F8_E4M3},
    {"f8_e5m2", at::randint(0, 255, {8}, at::kByte), dtype::F8_E5M2},
    {"scalar", at::scalar_tensor(2.5, at::kFloat), {}},
    {"empty", at::empty({0, 4}, at::kFloat), {}},
  };
  write_file(path, in, {{"format", "pt"}});
  auto layout = read_layout(path);
  REQUIRE(succeeded(layout));
  auto& l = std::get<file_layout>(layout);
  CHECK(l.layout.metadata.at("format") == "pt");
  CHECK(l.layout.data_offset % 8 == 0);
  CHECK(to_string(l.layout.tensors[10].type) == std::string{"F8_E4M3"});
  for (auto mode : {read_mode::read, read_mode::mmap}) {
    auto model = load("m", {l}, {}, {mode, 64});
    REQUIRE(model->tensors.size() == in.size());
    for (size_t i = 0; i < in.size(); ++i) {
      INFO(in[i].name);
      CHECK(model->tensors[i].name == in[i].name);
      CHECK(model->tensors[i].tensor.scalar_type() == in[i].tensor.scalar_type());
      CHECK(model->tensors[i].tensor.sizes() == in[i].tensor.sizes());
      auto n = static_cast<size_t>(in[i].tensor.numel() * in[i].tensor.element_size());
      if (n > 0)  // an empty tensor has no data pointer to compare
        CHECK(std::memcmp(model->tensors[i].tensor.data_ptr(), in[i].tensor.contiguous().data_ptr(), n) == 0);
    }
    CHECK(model->total_bytes() == l.layout.data_bytes);
  }
}

TEST_CASE("a load lists tensors in execution order when given, the rest in declaration order") {
  temp_dir dir;
  auto path = dir.file("m.safetensors");
  write_file(path, {{"a", at::ones({1}), {}}, {"b", at::ones({1}), {}}, {"c", at::ones({1}), {}}});
  auto l = std::get<file_layout>(read_layout(path));
  auto model = load("m", {l}, {"c", "a"}, {});
  CHECK(model->tensors[0].name == "c");
  CHECK(model->tensors[1].name == "a");
  CHECK(model->tensors[2].name == "b");
}

TEST_CASE("a misaligned byte range loads into aligned memory with the same values") {
  temp_dir dir;
  auto path = dir.file("odd.safetensors");
  float value = 3.25f;
  std::string data(1, 'x');
  data.append(reinterpret_cast<const char*>(&value), 4);
  raw_file(path, R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})", data);
  auto l = std::get<file_layout>(read_layout(path));
  auto model = load("m", {l}, {}, {});
  auto w = model->find("w");
  CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 4 == 0);
  CHECK(w.item<float>() == 3.25f);
}

TEST_CASE("bad files are refused with bad_file, naming the file and the problem") {
  temp_dir dir;
  auto path = dir.file("bad.safetensors");
  auto good = std::string{R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"};
  struct bad_case {
    const char* what;
    std::function<void()> make;
    const char* problem;
  };
  std::vector<bad_case> cases = {
    {"truncated file", [&] { std::ofstream{path, std::ios::binary} << "abc"; }, "truncated"},
    {"header longer than the file", [&] { raw_file(path, good, std::string(8, '\0'), 4096); }, "longer than the file"},
    {"malformed JSON", [&] { raw_file(path, R"({"w": {"dtype": )", ""); }, "not valid JSON"},
    {"offsets past the end", [&] { raw_file(path, good, std::string(4, '\0')); }, "past the end"},
    {"overlapping tensors",
     [&] {
       raw_file(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                std::string(12, '\0'));
     },
     "overlap"},
    {"shape and size disagree",
     [&] { raw_file(path, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')); },
     "shape [3] of F32 is 12 bytes but its byte range holds 8"},
    {"unknown dtype",
     [&] { raw_file(path, R"({"w":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0')); },
     "unknown dtype 'F7'"},
    {"reversed offsets",
     [&] { raw_file(path, R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}})", std::string(2, '\0')); },
     "end before they begin"},
    {"a tensor declared twice",
     [&] {
       raw_file(path, R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                std::string(2, '\0'));
     },
     "declared twice"},
  };
  for (auto& c : cases) {
    INFO(c.what);
    c.make();
    auto err = bad_layout(path);
    CHECK(err.code == errc::bad_file);
    CHECK(err.detail.find(path) == 0);
    CHECK(err.detail.find(c.problem) != std::string::npos);
  }
}

TEST_CASE("a missing file is file_missing at registration and at load") {
  temp_dir dir;
  CHECK(bad_layout(dir.file("nope.safetensors")).code == errc::file_missing);
  auto path = dir.file("m.safetensors");
  write_file(path, {{"w", at::ones({4}), {}}});
  auto l = std::get<file_layout>(read_layout(path));
  std::filesystem::remove(path);
  try {
    load("m", {l}, {}, {});
    FAIL("the load should fail");
  } catch (const load_error& e) {
    CHECK(e.code() == errc::file_missing);
    CHECK(std::string{e.what()}.find(path) != std::string::npos);
  }
}

TEST_CASE("a file that changed after registration is refused at load") {
  temp_dir dir;
  auto path = dir.file("m.safetensors");
  write_file(path, {{"w", at::ones({4}), {}}});
  auto l = std::get<file_layout>(read_layout(path));
  SECTION("its size changed") {
    write_file(path, {{"w", at::ones({5}), {}}});
  }
  SECTION("its modification time changed") {
    auto t = std::filesystem::last_write_time(path);
    std::filesystem::last_write_time(path, t + std::chrono::seconds(5));
  }
  for (auto mode : {read_mode::read, read_mode::mmap}) {
    try {
      load("m", {l}, {}, {mode});
      FAIL("the load should fail");
    } catch (const load_error& e) {
      CHECK(e.code() == errc::file_changed);
    }
  }
}

TEST_CASE("the writer refuses duplicate names and dtypes it cannot hold") {
  temp_dir dir;
  CHECK_THROWS(write_file(dir.file("d.safetensors"), {{"a", at::ones({1}), {}}, {"a", at::ones({1}), {}}}));
  CHECK_THROWS(write_file(dir.file("c.safetensors"), {{"a", at::ones({1}, at::kComplexFloat), {}}}));
  CHECK_THROWS(write_file(dir.file("w.safetensors"), {{"a", at::ones({1}), dtype::F8_E4M3}}));
}

TEST_CASE("every file of the fuzz corpus is parsed without harm: the bad ones refused, the valid ones accepted") {
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(MCACHE_FUZZ_CORPUS)) {
    auto name = entry.path().filename().string();
    INFO(name);
    auto bytes = bytes_of(entry.path().string());
    auto r = parse_header(bytes.data(), bytes.size(), bytes.size(), name);
    if (name.rfind("valid", 0) == 0) {
      CHECK(succeeded(r));
    } else {
      REQUIRE_FALSE(succeeded(r));
      CHECK(std::get<failure>(r).code == errc::bad_file);
    }
    ++files;
  }
  CHECK(files >= 10);
}

TEST_CASE("random damage to a valid file never makes the parser accept an unsafe layout") {
  temp_dir dir;
  auto path = dir.file("seed.safetensors");
  write_file(path, {{"a", at::ones({3, 4}), {}}, {"b", at::ones({5}).to(at::kHalf), {}}, {"c", at::ones({2}, at::kLong), {}}},
             {{"k", "v"}});
  auto seed = bytes_of(path);
  std::mt19937 rng{12345};
  size_t accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    auto bytes = seed;
    auto damage = rng() % 4;
    if (damage == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      for (int k = 0, n = 1 + static_cast<int>(rng() % 4); k < n; ++k) {
        auto at = rng() % bytes.size();
        if (damage == 1)
          bytes[at] = static_cast<uint8_t>(rng());
        else if (damage == 2)
          bytes[at] = static_cast<uint8_t>("0123456789[]{},\":-e"[rng() % 19]);
        else
          bytes.insert(bytes.begin() + static_cast<long>(at), static_cast<uint8_t>("0123456789,"[rng() % 11]));
      }
    }
    auto r = parse_header(bytes.data(), bytes.size(), bytes.size(), "fuzzed");
    if (!succeeded(r))
      continue;
    ++accepted;
    // Whatever is accepted must be safe to load: every range inside the data, no overlaps, sizes agree.
    const auto& h = std::get<header>(r);
    CHECK(h.data_offset + h.data_bytes == bytes.size());
    for (const auto& t : h.tensors) {
      CHECK(t.end <= h.data_bytes);
      uint64_t numel = 1;
      for (auto d : t.shape)
        numel *= static_cast<uint64_t>(d);
      CHECK(numel * element_size(t.type) == t.bytes());
    }
  }
  CHECK(accepted > 0);  // some damage (e.g. to the data section) leaves a valid file
}

// Note [mmap and truncation]: a file truncated after an mmap load removes the pages under the mapping,
// and the next touch of a tensor past the new end is a SIGBUS: the kernel's contract for shared file pages,
// not something a process can catch and continue from. That is why read mode is the default: its
// tensors live in the process's own memory. These two tests pin both behaviours down.

TEST_CASE("in read mode, a file truncated after the load leaves the loaded tensors intact") {
  temp_dir dir;
  auto path = dir.file("m.safetensors");
  auto w = at::arange(1 << 16, at::kFloat);
  write_file(path, {{"w", w, {}}});
  auto layout = read_layout(path);
  REQUIRE(succeeded(layout));
  auto model = load("m", {std::get<file_layout>(layout)}, {}, {read_mode::read});
  std::filesystem::resize_file(path, 16);
  CHECK(model->find("w").equal(w));
}

TEST_CASE("in mmap mode, a file truncated after the load ends the process at the next touch (documented)") {
  temp_dir dir;
  auto path = dir.file("m.safetensors");
  write_file(path, {{"w", at::arange(1 << 16, at::kFloat), {}}});
  auto layout = read_layout(path);
  REQUIRE(succeeded(layout));
  std::fflush(nullptr);
  auto child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto model = load("m", {std::get<file_layout>(layout)}, {}, {read_mode::mmap});
    ::truncate(path.c_str(), 16);
    volatile float sum = 0;
    auto t = model->find("w");
    for (int64_t i = 0; i < t.numel(); i += 1024)
      sum = sum + t.data_ptr<float>()[i];
    ::_exit(0);  // not reached: the touch past the new end is a SIGBUS
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGBUS);
}

TEST_CASE("in read mode, a load whose every waiter left stops between chunks and a load still wanted reads on") {
  // Note [An abandoned load stops]: the RAM-cache actor raises the flag; the reader asks before each chunk.
  temp_dir dir;
  auto path = dir.file("m.safetensors");
  auto w = at::arange(1 << 16, at::kFloat);  // 256 KiB: 4 chunks of 64 KiB
  write_file(path, {{"w", w, {}}});
  auto layout = read_layout(path);
  REQUIRE(succeeded(layout));
  load_options chunked{read_mode::read};
  chunked.chunk_bytes = 64 << 10;
  std::atomic<bool> abandoned{true};
  {
    mcache::detail::load_scope stops_when{&abandoned};
    CHECK(load_abandoned());
    CHECK_THROWS_AS(load("m", {std::get<file_layout>(layout)}, {}, chunked), load_stopped);
    abandoned = false;
    CHECK(load("m", {std::get<file_layout>(layout)}, {}, chunked)->find("w").equal(w));
  }
  abandoned = true;
  CHECK_FALSE(load_abandoned());  // outside the scope, nothing reads the flag
  CHECK(load("m", {std::get<file_layout>(layout)}, {}, chunked)->find("w").equal(w));
}
