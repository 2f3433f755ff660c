#include "runtime/core/models/catalog.hpp"

#include "runtime/core/admission/sizes.hpp"
#include "runtime/core/format.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <mutex>

namespace mcache {

namespace {
thread_local const std::atomic<bool>* current_load_abandoned = nullptr;  // Note [An abandoned load stops]
} // namespace

bool load_abandoned() {
  return current_load_abandoned != nullptr && current_load_abandoned->load(std::memory_order_relaxed);
}

void stop_if_abandoned() {
  if (load_abandoned())
    throw load_stopped{};
}

namespace detail {
load_scope::load_scope(const std::atomic<bool>* abandoned) : previous_(current_load_abandoned) {
  current_load_abandoned = abandoned;
}
load_scope::~load_scope() { current_load_abandoned = previous_; }
} // namespace detail

std::optional<failure> catalog::validate(const model_descriptor& descriptor) {
  if (descriptor.id.empty())
    return failure{errc::invalid_argument, "a model id must not be empty"};
  if (!is_printable_utf8(descriptor.id))
    return failure{errc::invalid_argument, "model id '" + escape_unprintable(descriptor.id)
                                             + "' is not printable UTF-8 text: ids appear in /status, metrics, "
                                               "logs and Python (rename the file)"};
  if (descriptor.id.find('#') != model_id::npos)
    return failure{errc::invalid_argument, "model id '" + descriptor.id
                                             + "' contains '#', which names generations (Note [Remove and replace])"};
  if (descriptor.bytes == 0)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' declares 0 bytes"};
  if (descriptor.bytes > max_plausible_bytes)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' declares " + format_bytes(descriptor.bytes)
                                             + ", not a plausible size (at most "
                                             + format_bytes(max_plausible_bytes) + ")"};
  if (!descriptor.loader)
    return failure{errc::invalid_argument, "model '" + descriptor.id + "' has no loader"};
  if (!descriptor.tensor_bytes.empty()) {
    // Sizes the scheduler refuses plans by must describe the model: one per named tensor, within its bytes.
    bytes_t sum = 0;
    for (auto b : descriptor.tensor_bytes)
      sum = saturating_add(sum, b);
    if (descriptor.tensor_bytes.size() != descriptor.tensor_names.size() || sum > descriptor.bytes)
      return failure{errc::invalid_argument, "model '" + descriptor.id + "' gives " + std::to_string(descriptor.tensor_bytes.size())
                                               + " tensor sizes (" + format_bytes(sum) + ") for "
                                               + std::to_string(descriptor.tensor_names.size()) + " tensors of "
                                               + format_bytes(descriptor.bytes)};
  }
  return std::nullopt;
}

namespace {
model_id generation_id(const model_id& registered, uint64_t generation) {
  return generation <= 1 ? registered : registered + "#" + std::to_string(generation);
}
} // namespace

std::optional<failure> catalog::add(model_descriptor descriptor) {
  if (auto bad = validate(descriptor))
    return bad;
  std::unique_lock<std::shared_mutex> guard{mutex_};
  auto registered = descriptor.id;
  if (models_.count(registered))
    return failure{errc::invalid_argument, "model '" + registered + "' is already registered"};
  // Registered before and removed: a new generation, since copies of the old one may still be held.
  descriptor.id = generation_id(registered, ++generations_[registered]);
  registered_of_[descriptor.id] = registered;
  models_.emplace(registered, std::make_shared<const model_descriptor>(std::move(descriptor)));
  return std::nullopt;
}

outcome<model_id> catalog::replace(model_descriptor descriptor) {
  if (auto bad = validate(descriptor))
    return *bad;
  std::unique_lock<std::shared_mutex> guard{mutex_};
  auto registered = descriptor.id;
  auto i = models_.find(registered);
  if (i == models_.end())
    return failure{errc::unknown_model, "model '" + registered + "' is not registered: add it instead"};
  auto retired = i->second->id;
  registered_of_.erase(retired);
  descriptor.id = generation_id(registered, ++generations_[registered]);
  registered_of_[descriptor.id] = registered;
  i->second = std::make_shared<const model_descriptor>(std::move(descriptor));
  return retired;
}

outcome<model_id> catalog::remove(const model_id& id) {
  std::unique_lock<std::shared_mutex> guard{mutex_};
  auto i = models_.find(id);
  if (i == models_.end())
    return failure{errc::unknown_model, "model '" + id + "' is not registered"};
  auto retired = i->second->id;
  registered_of_.erase(retired);
  models_.erase(i);
  return retired;
}

descriptor_ptr catalog::find(const model_id& id) const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  auto i = models_.find(id);
  if (i != models_.end())
    return i->second;
  auto g = registered_of_.find(id);  // a current generation's own id
  return g == registered_of_.end() ? nullptr : models_.at(g->second);
}

descriptor_ptr catalog::find_generation(const model_id& generation) const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  auto g = registered_of_.find(generation);
  return g == registered_of_.end() ? nullptr : models_.at(g->second);
}

std::optional<model_id> catalog::registered_id(const model_id& generation) const {
  std::shared_lock<std::shared_mutex> guard{mutex_};
  auto g = registered_of_.find(generation);
  return g == registered_of_.end() ? std::nullopt : std::optional<model_id>{g->second};
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
  for (auto n : tensor_numels) {
    // Checked before any arithmetic: a negative count, or one whose bytes wrap, would register a size
    // the loader can never produce (2**62 + 1 floats once registered as 4 bytes).
    if (n < 0 || static_cast<bytes_t>(n) > (max_plausible_bytes - std::min(bytes, max_plausible_bytes)) / sizeof(float))
      throw request_error(failure{errc::invalid_argument, "synthetic model '" + id + "': a tensor of " + std::to_string(n)
                                                            + " floats is negative or not a plausible size"});
    bytes += static_cast<bytes_t>(n) * sizeof(float);
  }
  model_descriptor d;
  d.id = std::move(id);
  d.bytes = bytes;
  d.source = "synthetic";
  for (size_t i = 0; i < tensor_numels.size(); ++i) {
    d.tensor_names.push_back("t" + std::to_string(i));  // as the loader names them
    d.tensor_bytes.push_back(static_cast<bytes_t>(tensor_numels[i]) * sizeof(float));
  }
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
