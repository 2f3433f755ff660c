#include "runtime/core/transfer/device_backend.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <thread>

namespace mcache {

namespace {

/// The device tensor of `host`'s dtype and shape that lives at the start of `staging`.
at::Tensor view_in(const at::Tensor& staging, const at::Tensor& host) {
  auto keep = staging;
  return at::from_blob(staging.data_ptr(), host.sizes(), [keep](void*) {}, staging.options().dtype(host.dtype()));
}

class simulated_backend final : public device_backend {
public:
  simulated_backend(device_index device, simulated_device_options options)
    : device_(device), options_(std::move(options)) {}

  std::string describe() const override { return "simulated device " + std::to_string(device_); }

  bytes_t footprint(const at::Tensor& tensor) const override { return tensor_bytes(tensor); }

  std::shared_ptr<const device_model> copy_in(const host_model& model, const std::vector<size_t>& indices) override {
    auto start = std::chrono::steady_clock::now();
    auto copy = std::make_shared<device_model>();
    bytes_t bytes = 0;
    for (auto i : indices)
      bytes += tensor_bytes(model.tensors.at(i).tensor);
    if (options_.inject_oom && options_.inject_oom(bytes))
      throw device_oom_error("simulated device " + std::to_string(device_) + ": allocation of "
                             + std::to_string(bytes) + " bytes failed (injected)");
    for (auto i : indices) {
      const auto& nt = model.tensors.at(i);
      copy->tensors.push_back({nt.name, nt.tensor.clone()});
    }
    copy->device_bytes = bytes;
    pace(start, bytes);
    return copy;
  }

  at::Tensor allocate_staging(bytes_t bytes) override {
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  }

  std::shared_future<at::Tensor> copy_async(const at::Tensor& host, const at::Tensor& staging) override {
    return std::async(std::launch::async, [this, host, staging] {
             auto start = std::chrono::steady_clock::now();
             auto dst = view_in(staging, host);
             dst.copy_(host);
             pace(start, tensor_bytes(host));
             return dst;
           })
      .share();
  }

private:
  void pace(std::chrono::steady_clock::time_point start, bytes_t bytes) const {
    if (options_.bandwidth_bytes_per_s <= 0)
      return;
    auto wanted = std::chrono::duration<double>(static_cast<double>(bytes) / options_.bandwidth_bytes_per_s);
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(wanted));
  }

  device_index device_;
  simulated_device_options options_;
};

class host_backend final : public device_backend {
public:
  std::string describe() const override { return "host (CPU pins)"; }
  bytes_t footprint(const at::Tensor&) const override { return 0; }
  std::shared_ptr<const device_model> copy_in(const host_model& model, const std::vector<size_t>& indices) override {
    auto alias = std::make_shared<device_model>();
    for (auto i : indices)
      alias->tensors.push_back(model.tensors.at(i));  // shallow: the same storage as the RAM copy
    return alias;
  }
  at::Tensor allocate_staging(bytes_t) override { return at::empty({0}, at::kByte); }
  std::shared_future<at::Tensor> copy_async(const at::Tensor& host, const at::Tensor&) override {
    std::promise<at::Tensor> ready;
    ready.set_value(host);
    return ready.get_future().share();
  }
};

} // namespace

std::unique_ptr<device_backend> make_simulated_backend(device_index device, simulated_device_options options) {
  return std::make_unique<simulated_backend>(device, std::move(options));
}

std::unique_ptr<device_backend> make_host_backend() { return std::make_unique<host_backend>(); }

} // namespace mcache
