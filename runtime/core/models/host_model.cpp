#include "runtime/core/models/host_model.hpp"

namespace mcache {

bytes_t tensor_bytes(const at::Tensor& t) {
  if (!t.defined())
    return 0;
  return static_cast<bytes_t>(t.numel()) * static_cast<bytes_t>(t.element_size());
}

namespace {
at::Tensor find_in(const std::vector<named_tensor>& ts, const std::string& name) {
  for (const auto& nt : ts)
    if (nt.name == name)
      return nt.tensor;
  return {};
}
} // namespace

bytes_t host_model::tensor_bytes() const {
  bytes_t sum = 0;
  for (const auto& nt : tensors)
    sum += mcache::tensor_bytes(nt.tensor);
  return sum;
}

at::Tensor host_model::find(const std::string& name) const { return find_in(tensors, name); }

at::Tensor device_model::find(const std::string& name) const { return find_in(tensors, name); }

} // namespace mcache
