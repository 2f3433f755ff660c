#include "runtime/core/transfer/device_backend.hpp"

#include "runtime/core/models/host_memory.hpp"
#include "runtime/core/transfer/buffer_cache.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <future>
#include <utility>
#include <thread>

namespace mcache {

at::Tensor view_in(const at::Tensor& buffer, const at::Tensor& host) {
  auto keep = buffer;
  return at::for_blob(buffer.data_ptr(), host.sizes())
    .deleter([keep](void*) {})
    .options(buffer.options().dtype(host.dtype()))
    .target_device(buffer.device())  // LibTorch cannot tell the device of a PrivateUse1 pointer by itself
    .make_tensor();
}

std::shared_ptr<host_model> copy_to_host(const device_model& copy, bool non_blocking) {
  auto host = std::make_shared<host_model>();
  for (const auto& nt : copy.tensors) {
    if (!nt.tensor.defined())
      continue;
    auto src = nt.tensor.is_contiguous() ? nt.tensor : nt.tensor.contiguous();
    auto dst = view_in(host_memory::buffer(tensor_bytes(src)), src);
    dst.copy_(src, non_blocking);
    host->tensors.push_back({nt.name, std::move(dst)});
  }
  return host;
}

std::shared_ptr<host_model> device_backend::copy_out(const device_model& copy) {
  return copy_to_host(copy, /*non_blocking=*/false);
}

namespace {

class simulated_backend final : public device_backend {
public:
  simulated_backend(device_index device, simulated_device_options options)
    // A dropped copy may still be on its way back: a copy may wait for it.
    : device_(device), options_(std::move(options)),
      cache_(std::make_shared<buffer_cache>(buffer_cache::pageable(options_.cache_bytes, runtime_return_wait))) {}

  bytes_t cached_bytes() const override { return cache_->cached_bytes(); }
  bytes_t overflow_bytes() const override { return cache_->overflow_bytes(); }
  uint64_t overflows() const override { return cache_->overflows(); }

  std::string describe() const override { return "simulated device " + std::to_string(device_); }

  bytes_t footprint(bytes_t tensor_bytes) const override { return tensor_bytes; }

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
      // Into a reused buffer (Note [Reuse, do not re-fault]), not a fresh clone.
      auto n = tensor_bytes(nt.tensor);
      if (n == 0) {
        copy->tensors.push_back({nt.name, nt.tensor.clone()});
        continue;
      }
      auto dst = view_in(cache_->take(n), nt.tensor);
      dst.copy_(nt.tensor);
      copy->tensors.push_back({nt.name, dst});
    }
    copy->device_bytes = bytes;
    pace(start, bytes);
    return copy;
  }

  std::shared_ptr<host_model> copy_out(const device_model& copy) override {
    auto start = std::chrono::steady_clock::now();
    auto host = copy_to_host(copy, /*non_blocking=*/false);
    pace(start, host->tensor_bytes());
    return host;
  }

  std::unique_ptr<stream_slot> make_stream_slot(bytes_t bytes) override {
    return std::make_unique<simulated_slot>(this, cache_->take(bytes));
  }

  void pace(std::chrono::steady_clock::time_point start, bytes_t bytes) const {
    if (options_.bandwidth_bytes_per_s <= 0)
      return;
    auto wanted = std::chrono::duration<double>(static_cast<double>(bytes) / options_.bandwidth_bytes_per_s);
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(wanted));
  }

private:
  /// No streams: a fill is a copy on another thread, and take waits for it on the CPU.
  class simulated_slot final : public stream_slot {
  public:
    simulated_slot(simulated_backend* backend, at::Tensor buffer) : backend_(backend), buffer_(std::move(buffer)) {}
    ~simulated_slot() override {
      if (fill_.valid())
        fill_.wait();
    }
    void fill(const at::Tensor& host) override {
      if (fill_.valid())
        fill_.wait();  // the previous fill of this slot must not race the next
      fill_ = std::async(std::launch::async, [this, host] {
        auto start = std::chrono::steady_clock::now();
        auto dst = view_in(buffer_, host);
        dst.copy_(host);
        backend_->pace(start, tensor_bytes(host));
        return dst;
      });
    }
    at::Tensor take() override { return fill_.get(); }
    void give_back() override {}

  private:
    simulated_backend* backend_;
    at::Tensor buffer_;
    std::future<at::Tensor> fill_;
  };

  device_index device_;
  simulated_device_options options_;
  std::shared_ptr<buffer_cache> cache_;
};

class host_backend final : public device_backend {
public:
  std::string describe() const override { return "host (CPU pins)"; }
  bytes_t footprint(bytes_t) const override { return 0; }
  std::shared_ptr<const device_model> copy_in(const host_model& model, const std::vector<size_t>& indices) override {
    auto alias = std::make_shared<device_model>();
    for (auto i : indices)
      alias->tensors.push_back(model.tensors.at(i));  // shallow: the same storage as the RAM copy
    return alias;
  }
  /// CPU pins stream nothing: a "fill" is the host tensor itself.
  std::unique_ptr<stream_slot> make_stream_slot(bytes_t) override {
    struct alias_slot final : stream_slot {
      void fill(const at::Tensor& host) override { tensor = host; }
      at::Tensor take() override { return std::exchange(tensor, at::Tensor()); }
      void give_back() override {}
      at::Tensor tensor;
    };
    return std::make_unique<alias_slot>();
  }
};

} // namespace

std::unique_ptr<device_backend> make_simulated_backend(device_index device, simulated_device_options options) {
  return std::make_unique<simulated_backend>(device, std::move(options));
}

std::unique_ptr<device_backend> make_host_backend() { return std::make_unique<host_backend>(); }

} // namespace mcache
