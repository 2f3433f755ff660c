#pragma once
// A model as it lives in RAM (`host_model`) and as a device tier holds it (`device_model`).

#include "messages/ids.hpp"

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace mcache {

struct named_tensor {
  std::string name;
  at::Tensor tensor;
};

/// Bytes of a tensor's elements (numel × element size); views are weighed by what they show.
bytes_t tensor_bytes(const at::Tensor& t);

/// A loaded model: its named tensors in execution order, plus an optional opaque payload of declared size
/// (a tokenizer, a config) that never goes to a device. Immutable once loaded; shared by const pointer.
struct host_model {
  model_id id;
  std::vector<named_tensor> tensors;
  std::shared_ptr<const void> opaque;  // non-tensor payload, may be null
  bytes_t opaque_bytes = 0;            // declared size of `opaque` in bytes

  bytes_t tensor_bytes() const;
  bytes_t total_bytes() const { return tensor_bytes() + opaque_bytes; }
  /// The tensor named `name`, or an undefined tensor.
  at::Tensor find(const std::string& name) const;
};

/// A model's copy on one device tier. For the CPU tier the tensors alias the host copy.
struct device_model {
  std::vector<named_tensor> tensors;
  bytes_t device_bytes = 0;  // what this copy costs the device budget

  at::Tensor find(const std::string& name) const;
};

} // namespace mcache
