#pragma once
// Placement policy, apart from the mechanism: where to pin a model when the caller lets the runtime choose
// (`session::pin_anywhere`). The policy sees a snapshot of each device and picks one; the device tier
// then admits, waits or refuses exactly as for a pin the caller placed.

#include "messages/ids.hpp"
#include "messages/stats.hpp"
#include "runtime/core/models/catalog.hpp"

#include <functional>
#include <memory>
#include <vector>

namespace mcache {

class placement_policy {
public:
  virtual ~placement_policy() = default;
  /// The device to pin `model` with `working_bytes` of working memory on, one of `devices` (never empty).
  virtual device_index choose(const model_descriptor& model, bytes_t working_bytes,
                              const std::vector<placement_view>& devices) const = 0;
};

/// The least a pin of `model` could ever need on a device (least_pin_bytes, residency_plan.hpp) as far as
/// its descriptor tells: without partial loading the whole model; with it, its required tensors and a
/// staging ring of `slots` buffers of its largest other tensor where the descriptor gives its tensors'
/// sizes, else nothing (a custom loader's model: the device tier, which sees its tensors, decides).
/// `footprint` turns a tensor's bytes into what its device copy costs (device_backend::footprint); none:
/// the same bytes.
bytes_t least_pin_bytes(const model_descriptor& model, bool partial_loading, size_t slots,
                        const std::function<bytes_t(bytes_t)>& footprint = {});

/// Whether a device that may use `usable_bytes` could ever hold pins needing at least `least_bytes` of
/// models (least_pin_bytes, summed over the models pinned together) with `working_bytes` of working memory.
/// (The scheduler asks it of a stage's models together, placement of one pin's.)
bool could_ever_hold(bytes_t usable_bytes, bytes_t least_bytes, bytes_t working_bytes);

/// `could_ever_hold` for a pin of `model` on `device`. (Where no device could, a policy picks among all,
/// and that device's tier refuses the pin with a typed error.)
bool could_hold(const placement_view& device, const model_descriptor& model, bytes_t working_bytes);

/// Among the devices that could hold the pin: where the model is most resident already (no copy), then
/// the model's preferred device (manifest), then the device with the most free bytes.
class resident_then_free_placement final : public placement_policy {
public:
  device_index choose(const model_descriptor& model, bytes_t working_bytes,
                      const std::vector<placement_view>& devices) const override;
};

using placement_factory = std::unique_ptr<placement_policy> (*)();
std::unique_ptr<placement_policy> make_resident_then_free_placement();

} // namespace mcache
