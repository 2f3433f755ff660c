#include "runtime/core/policies/placement_policy.hpp"

#include "runtime/core/tiers/residency_plan.hpp"

#include <algorithm>
#include <tuple>

namespace mcache {

bytes_t least_pin_bytes(const model_descriptor& model, bool partial_loading, size_t slots,
                        const std::function<bytes_t(bytes_t)>& footprint) {
  auto cost = [&](bytes_t bytes) { return footprint ? footprint(bytes) : bytes; };
  bool described = !model.tensor_bytes.empty() && model.tensor_bytes.size() == model.tensor_names.size();
  if (!described)
    return partial_loading ? 0 : cost(model.bytes);
  std::vector<tensor_slot> tensors;
  for (size_t i = 0; i < model.tensor_names.size(); ++i) {
    bool required = std::find(model.required_tensors.begin(), model.required_tensors.end(), model.tensor_names[i])
                    != model.required_tensors.end();
    tensors.push_back({cost(model.tensor_bytes[i]), required, tensor_residency::absent});
  }
  return least_pin_bytes(tensors, partial_loading, slots);
}

bool could_ever_hold(bytes_t usable_bytes, bytes_t least_bytes, bytes_t working_bytes) {
  return working_bytes <= usable_bytes && least_bytes <= usable_bytes - working_bytes;
}

bool could_hold(const placement_view& device, const model_descriptor& model, bytes_t working_bytes) {
  return could_ever_hold(device.usable_bytes, least_pin_bytes(model, device.partial_loading, device.staging_slots),
                         working_bytes);
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
