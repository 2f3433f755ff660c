// libFuzzer target for the safetensors header parser and validator. Not part of the default build: see
// scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). Any accepted header must describe a layout
// that is safe to load; a violation traps.

#include "runtime/core/models/safetensors.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mcache::safetensors;
  auto r = parse_header(data, size, size, "fuzz-input");
  if (!mcache::succeeded(r))
    return 0;
  const auto& h = std::get<header>(r);
  if (h.data_offset + h.data_bytes != size)
    __builtin_trap();
  uint64_t previous_end = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& t : h.tensors) {
    if (t.begin > t.end || t.end > h.data_bytes)
      __builtin_trap();
    uint64_t numel = 1;
    for (auto d : t.shape)
      numel *= static_cast<uint64_t>(d);
    if (numel * element_size(t.type) != t.bytes())
      __builtin_trap();
    if (t.bytes() > 0)
      ranges.emplace_back(t.begin, t.end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (const auto& r2 : ranges) {
    if (r2.first < previous_end)
      __builtin_trap();
    previous_end = r2.second;
  }
  return 0;
}
