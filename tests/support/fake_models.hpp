#pragma once
// Fake payloads of known byte size for the tier tests: an opaque payload, no tensors, no copying.

#include "runtime/core/models/catalog.hpp"

#include <stdexcept>

namespace mcache::test {

inline model_descriptor fake_model(model_id id, bytes_t bytes) {
  model_descriptor d;
  d.id = std::move(id);
  d.bytes = bytes;
  d.source = "fake";
  d.loader = [](const model_descriptor& self) {
    auto m = std::make_shared<host_model>();
    m->id = self.id;
    m->opaque_bytes = self.bytes;
    return std::shared_ptr<const host_model>(std::move(m));
  };
  return d;
}

inline model_descriptor throwing_model(model_id id, bytes_t bytes, std::string message) {
  auto d = fake_model(std::move(id), bytes);
  d.loader = [message](const model_descriptor&) -> std::shared_ptr<const host_model> {
    throw std::runtime_error(message);
  };
  return d;
}

} // namespace mcache::test
