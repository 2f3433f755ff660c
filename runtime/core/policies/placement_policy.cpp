#include "runtime/core/policies/placement_policy.hpp"

#include <algorithm>
#include <tuple>

namespace mcache {

bool could_ever_hold(bytes_t usable_bytes, bool partial_loading, bytes_t model_bytes, bytes_t working_bytes) {
  if (working_bytes > usable_bytes)
    return false;
  return partial_loading || model_bytes <= usable_bytes - working_bytes;
}

bool could_hold(const placement_view& device, const model_descriptor& model, bytes_t working_bytes) {
  return could_ever_hold(device.usable_bytes, device.partial_loading, model.bytes, working_bytes);
}

device_index resident_then_free_placement::choose(const model_descriptor& model, bytes_t working_bytes,
                                                  const std::vector<placement_view>& devices) const {
  bool any_could = std::any_of(devices.begin(), devices.end(),
                               [&](const placement_view& v) { return could_hold(v, model, working_bytes); });
  auto rank = [&](const placement_view& v) {
    bool could = !any_could || could_hold(v, model, working_bytes);
    bool preferred = model.preferred_device && *model.preferred_device == v.device;
    return std::make_tuple(could, v.model_resident_bytes, preferred, v.free_bytes);
  };
  return std::max_element(devices.begin(), devices.end(),
                          [&](const placement_view& a, const placement_view& b) { return rank(a) < rank(b); })
    ->device;
}

std::unique_ptr<placement_policy> make_resident_then_free_placement() {
  return std::make_unique<resident_then_free_placement>();
}

} // namespace mcache
