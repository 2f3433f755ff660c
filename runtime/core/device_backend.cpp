#include "runtime/core/device_backend.hpp"

#include <chrono>
#include <thread>

namespace mcache {

namespace {

class simulated_backend final : public device_backend {
public:
  simulated_backend(device_index device, simulated_device_options options)
    : device_(device), options_(options) {}

  std::string describe() const override { return "simulated device " + std::to_string(device_); }

  bytes_t footprint(const host_model& model) const override { return model.tensor_bytes(); }

  std::shared_ptr<const device_model> copy_in(const host_model& model) override {
    auto start = std::chrono::steady_clock::now();
    auto copy = std::make_shared<device_model>();
    for (const auto& nt : model.tensors) {
      copy->tensors.push_back({nt.name, nt.tensor.clone()});
      copy->device_bytes += tensor_bytes(nt.tensor);
    }
    if (options_.bandwidth_bytes_per_s > 0) {
      auto wanted = std::chrono::duration<double>(copy->device_bytes / options_.bandwidth_bytes_per_s);
      std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(wanted));
    }
    return copy;
  }

private:
  device_index device_;
  simulated_device_options options_;
};

class host_backend final : public device_backend {
public:
  std::string describe() const override { return "host (CPU pins)"; }
  bytes_t footprint(const host_model&) const override { return 0; }
  std::shared_ptr<const device_model> copy_in(const host_model& model) override {
    auto alias = std::make_shared<device_model>();
    alias->tensors = model.tensors;  // shallow: the same storage as the RAM copy
    return alias;
  }
};

} // namespace

std::unique_ptr<device_backend> make_simulated_backend(device_index device, simulated_device_options options) {
  return std::make_unique<simulated_backend>(device, options);
}

std::unique_ptr<device_backend> make_host_backend() { return std::make_unique<host_backend>(); }

} // namespace mcache
