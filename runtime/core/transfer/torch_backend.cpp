// Note [One device-generic backend] (torch_backend.hpp).

#include "runtime/core/transfer/torch_backend.hpp"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace mcache {

namespace {

/// What the caching allocators round a block to: a device copy costs its bytes rounded up to this.
constexpr bytes_t allocation_granularity = 512;

std::string first_line(const char* text) {
  std::string s{text};
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

class torch_backend final : public device_backend {
public:
  explicit torch_backend(c10::Device device) : device_(device), guard_(device.type()) {
    c10::DeviceGuard on{device_};
    copy_stream_ = guard_.getStreamFromGlobalPool(device_);
    // Streaming fills get a stream of their own (high priority where the device has priorities): they
    // wait on the device for consumers, and model copies must not queue behind those waits.
    fill_stream_ = guard_.getStreamFromGlobalPool(device_, /*isHighPriority=*/true);
  }

  std::string describe() const override { return device_.str(); }
  c10::Device torch_device() const override { return device_; }

  bytes_t footprint(bytes_t bytes) const override {
    return (bytes + allocation_granularity - 1) / allocation_granularity * allocation_granularity;
  }

  std::shared_ptr<const device_model> copy_in(const host_model& model, const std::vector<size_t>& indices) override {
    c10::DeviceGuard on{device_};
    c10::StreamGuard copying{copy_stream_};
    auto copy = std::make_shared<device_model>();
    try {
      for (auto i : indices) {
        const auto& nt = model.tensors.at(i);
        auto src = nt.tensor.is_contiguous() ? nt.tensor : nt.tensor.contiguous();
        auto dst = at::empty(src.sizes(), src.options().device(device_).pinned_memory(false));
        dst.copy_(src, /*non_blocking=*/true);
        copy->tensors.push_back({nt.name, dst});
        copy->device_bytes += footprint(tensor_bytes(dst));
      }
      copy_stream_.synchronize();  // on the copy thread: the copy is complete before anyone is told
    } catch (const c10::OutOfMemoryError& e) {
      copy_stream_.synchronize();
      throw device_oom_error(describe() + ": " + first_line(e.what()));
    }
    return copy;
  }

  // Device to host on the copy stream, into pinned buffers where the host memory allows, so it runs at
  // the link's speed; the copy thread waits for it.
  std::shared_ptr<host_model> copy_out(const device_model& copy) override {
    c10::DeviceGuard on{device_};
    c10::StreamGuard copying{copy_stream_};
    auto host = copy_to_host(copy, /*non_blocking=*/true);
    copy_stream_.synchronize();
    return host;
  }

  std::unique_ptr<stream_slot> make_stream_slot(bytes_t bytes) override {
    c10::DeviceGuard on{device_};
    try {
      auto buffer = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(device_));
      return std::make_unique<slot>(this, std::move(buffer));
    } catch (const c10::OutOfMemoryError& e) {
      throw device_oom_error(describe() + ": " + first_line(e.what()));
    }
  }

  std::optional<c10::Stream> current_stream() const override { return guard_.getStream(device_); }

  void mark_in_use(const device_model& view, const std::vector<c10::Stream>& used_on) override {
    auto streams = used_on;
    streams.push_back(guard_.getStream(device_));
    for (const auto& nt : view.tensors)
      if (nt.tensor.defined() && nt.tensor.device() == device_)
        for (const auto& s : streams)
          guard_.recordDataPtrOnStream(nt.tensor.storage().data_ptr(), s);
  }

private:
  /// Note [Streaming on a real stream]: fills run on the copy stream after it waited for `consumed_`;
  /// the consumer's stream waits for `filled_`. The buffer is recorded on both streams, so the allocator
  /// keeps it until both have passed their use of it, whenever the ring is dropped.
  class slot final : public stream_slot {
  public:
    slot(torch_backend* backend, at::Tensor buffer)
      : backend_(backend), buffer_(std::move(buffer)), filled_(backend->device_.type()),
        consumed_(backend->device_.type()) {}

    void fill(const at::Tensor& host) override {
      c10::DeviceGuard on{backend_->device_};
      const auto& stream = backend_->fill_stream_;
      c10::StreamGuard copying{stream};
      consumed_.block(stream);
      auto src = host.is_contiguous() ? host : host.contiguous();
      tensor_ = view_in(buffer_, src);
      tensor_.copy_(src, /*non_blocking=*/true);
      source_ = src;  // the host memory stays alive while the copy may read it
      filled_.record(stream);
      backend_->guard_.recordDataPtrOnStream(buffer_.storage().data_ptr(), stream);
    }
    at::Tensor take() override {
      auto consumer = backend_->guard_.getStream(backend_->device_);
      filled_.block(consumer);
      backend_->guard_.recordDataPtrOnStream(buffer_.storage().data_ptr(), consumer);
      taken_on_ = consumer;
      return tensor_;
    }
    // Recorded on the stream that took the tensor (its kernels read it), whichever stream is current now.
    void give_back() override {
      if (taken_on_)
        consumed_.record(*taken_on_);
    }

  private:
    torch_backend* backend_;
    at::Tensor buffer_;
    at::Tensor tensor_;
    at::Tensor source_;
    c10::Event filled_;
    c10::Event consumed_;
    std::optional<c10::Stream> taken_on_;
  };

  c10::Device device_;
  c10::impl::VirtualGuardImpl guard_;
  c10::Stream copy_stream_{c10::Stream::DEFAULT, c10::Device(c10::DeviceType::CPU)};  // model copies
  c10::Stream fill_stream_{c10::Stream::DEFAULT, c10::Device(c10::DeviceType::CPU)};  // streaming fills
};

} // namespace

int torch_device_count(c10::DeviceType type) {
  if (!c10::impl::hasDeviceGuardImpl(type))
    return 0;
  return c10::impl::getDeviceGuardImpl(type)->deviceCount();
}

std::unique_ptr<device_backend> make_torch_backend(c10::Device device) {
  auto count = torch_device_count(device.type());
  if (!device.has_index() || device.index() < 0 || device.index() >= count)
    throw std::invalid_argument("LibTorch sees " + std::to_string(count) + " " + c10::DeviceTypeName(device.type(), true)
                                + " device(s); " + device.str() + " does not exist"
                                + (count == 0 && device.type() == c10::DeviceType::CUDA
                                     ? " (this LibTorch was built without CUDA)"
                                     : ""));
  return std::make_unique<torch_backend>(device);
}

namespace {
/// The PCI bus id of CUDA device `index` as the CUDA driver numbers it (CUDA_VISIBLE_DEVICES applied).
std::optional<std::string> cuda_pci_bus_id(int index) {
  using init_fn = int (*)(unsigned int);
  using get_fn = int (*)(int*, int);
  using bus_fn = int (*)(char*, int, int);
  static void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!library)
    return std::nullopt;
  static auto init = reinterpret_cast<init_fn>(dlsym(library, "cuInit"));
  static auto get = reinterpret_cast<get_fn>(dlsym(library, "cuDeviceGet"));
  static auto bus = reinterpret_cast<bus_fn>(dlsym(library, "cuDeviceGetPCIBusId"));
  static bool ready = init && get && bus && init(0) == 0;
  int device = 0;
  char id[64] = {};
  if (!ready || get(&device, index) != 0 || bus(id, sizeof id, device) != 0)
    return std::nullopt;
  return std::string{id};
}
} // namespace

std::optional<bytes_t> cuda_free_memory(int index) {
  // NVML's C API, loaded at run time (as Ollama does): no CUDA headers or libraries at build time.
  struct nvml_memory {
    unsigned long long total, free, used;
  };
  using init_fn = int (*)();
  using handle_fn = int (*)(unsigned int, void**);
  using handle_by_bus_fn = int (*)(const char*, void**);
  using memory_fn = int (*)(void*, nvml_memory*);
  static void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!library)
    return std::nullopt;
  static auto init = reinterpret_cast<init_fn>(dlsym(library, "nvmlInit_v2"));
  static auto handle = reinterpret_cast<handle_fn>(dlsym(library, "nvmlDeviceGetHandleByIndex_v2"));
  static auto handle_by_bus = reinterpret_cast<handle_by_bus_fn>(dlsym(library, "nvmlDeviceGetHandleByPciBusId_v2"));
  static auto memory = reinterpret_cast<memory_fn>(dlsym(library, "nvmlDeviceGetMemoryInfo"));
  static bool ready = init && handle && memory && init() == 0;
  if (!ready || index < 0)
    return std::nullopt;
  void* device = nullptr;
  // NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES; CUDA's index `index` is found by its
  // PCI bus id (from the driver API, also loaded at run time). Without it, the indices are taken as equal.
  auto bus = cuda_pci_bus_id(index);
  if (!(bus && handle_by_bus && handle_by_bus(bus->c_str(), &device) == 0)
      && handle(static_cast<unsigned int>(index), &device) != 0)
    return std::nullopt;
  nvml_memory info{};
  if (memory(device, &info) != 0)
    return std::nullopt;
  return static_cast<bytes_t>(info.free);
}

} // namespace mcache
