#pragma once
// Placement policy, apart from the mechanism: where to pin a model when the caller lets the runtime choose
// (`session::pin_anywhere`). The policy sees a snapshot of each device and picks one; the device tier
// then admits, waits or refuses exactly as for a pin the caller placed.

#include "messages/ids.hpp"
#include "messages/stats.hpp"
#include "runtime/core/models/catalog.hpp"

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

/// Whether `device` could ever hold a pin of `model` with `working_bytes`: the working memory fits what
/// it may use, and so does the whole model with it where it loads no model in part. (Where none could,
/// a policy picks among all, and that device's tier refuses the pin with a typed error.)
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
