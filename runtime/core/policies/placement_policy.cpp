#include "runtime/core/policies/placement_policy.hpp"

#include <algorithm>
#include <tuple>

namespace mcache {

device_index resident_then_free_placement::choose(const model_descriptor& model,
                                                  const std::vector<placement_view>& devices) const {
  auto rank = [&](const placement_view& v) {
    bool preferred = model.preferred_device && *model.preferred_device == v.device;
    return std::make_tuple(v.model_resident_bytes, preferred, v.free_bytes);
  };
  return std::max_element(devices.begin(), devices.end(),
                          [&](const placement_view& a, const placement_view& b) { return rank(a) < rank(b); })
    ->device;
}

std::unique_ptr<placement_policy> make_resident_then_free_placement() {
  return std::make_unique<resident_then_free_placement>();
}

} // namespace mcache
