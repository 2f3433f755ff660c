#include "runtime/core/models/catalog.hpp"

#include "runtime/core/admission/sizes.hpp"
#include "runtime/core/format.hpp"

#include <ATen/ATen.h>

#include <mutex>

namespace mcache {

std::optional<failure> catalog::add(model_descriptor descriptor) {
  if (descriptor.id.empty())
    return failure{errc::invalid_argument, "a model id must not be empty"};
  if (descriptor.bytes == 0)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' declares 0 bytes"};
  if (descriptor.bytes > max_plausible_bytes)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' declares " + format_bytes(descriptor.bytes)
                                             + ", not a plausible size (at most "
                                             + format_bytes(max_plausible_bytes) + ")"};
  if (!descriptor.loader)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' has no loader"};
  std::unique_lock<std::shared_mutex> guard{mutex_};
  auto id = descriptor.id;
  if (!models_.emplace(id, std::make_shared<const model_descriptor>(std::move(descriptor))).second)
    return failure{errc::invalid_argument, "model '" + id + "' is already registered"};
  return std::nullopt;
}

descriptor_ptr catalog::find(const model_id& id) const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  auto i = models_.find(id);
  return i == models_.end() ? nullptr : i->second;
}

std::vector<model_id> catalog::ids() const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  std::vector<model_id> out;
  for (const auto& kv : models_)
    out.push_back(kv.first);
  return out;
}

size_t catalog::size() const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  return models_.size();
}

model_descriptor synthetic_model(model_id id, std::vector<int64_t> tensor_numels, uint64_t seed,
                                 bytes_t opaque_bytes) {
  bytes_t bytes = opaque_bytes;
  for (auto n : tensor_numels)
    bytes += static_cast<bytes_t>(n) * sizeof(float);
  model_descriptor d;
  d.id = std::move(id);
  d.bytes = bytes;
  d.source = "synthetic";
  d.loader = [numels = std::move(tensor_numels), seed, opaque_bytes](const model_descriptor& self) {
    auto m = std::make_shared<host_model>();
    m->id = self.id;
    for (size_t i = 0; i < numels.size(); ++i) {
      // arange-based fill: deterministic, cheap, and different per tensor and per seed
      auto t = at::arange(numels[i], at::kFloat).mul_(1e-3).add_(static_cast<double>(seed * 131 + i));
      m->tensors.push_back({"t" + std::to_string(i), t});
    }
    if (opaque_bytes > 0) {
      m->opaque = std::make_shared<std::vector<char>>(opaque_bytes, '\0');
      m->opaque_bytes = opaque_bytes;
    }
    return std::shared_ptr<const host_model>(std::move(m));
  };
  return d;
}

} // namespace mcache
