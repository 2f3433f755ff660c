// Note [Fake accelerator] (fake_accelerator.hpp): streams are worker threads, events complete when their
// stream reaches them, memory has a capacity and can be made to fail.

#include "runtime/core/transfer/fake_accelerator.hpp"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#if __has_include(<torch/csrc/api/include/torch/version.h>)
#include <torch/csrc/api/include/torch/version.h>
#elif __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
// LibTorch 2.3 made Allocator::allocate non-const and added copy_data.
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3))
#define MCACHE_ALLOCATE_CONST
#define MCACHE_ALLOCATOR_COPY_DATA 1
#else
#define MCACHE_ALLOCATE_CONST const
#define MCACHE_ALLOCATOR_COPY_DATA 0
#endif

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mcache::fake_accelerator {

namespace {

constexpr auto fake_type = c10::DeviceType::PrivateUse1;
constexpr int max_devices = 8;
constexpr int pool_streams = 8;  // streams 1..8 of each device; 0 is its default stream

/// One stream: a worker thread running its work in order.
class stream_worker {
public:
  stream_worker() : thread_([this] { run(); }) { thread_.detach(); }

  void post(std::function<void()> work) {
    std::lock_guard<std::mutex> guard{mutex_};
    queue_.push_back(std::move(work));
    ++posted_;
    wake_.notify_all();
  }
  bool idle() {
    std::lock_guard<std::mutex> guard{mutex_};
    return finished_ == posted_;
  }
  /// Waits for the work posted before the call (later work cannot starve it).
  void drain() {
    std::unique_lock<std::mutex> guard{mutex_};
    auto target = posted_;
    done_.wait(guard, [&] { return finished_ >= target; });
  }

private:
  void run() {
    std::unique_lock<std::mutex> guard{mutex_};
    for (;;) {
      wake_.wait(guard, [&] { return !queue_.empty(); });
      auto work = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      guard.unlock();
      work();
      work = nullptr;  // what it captured (tensors) is released before the lock: a free may post here
      guard.lock();
      busy_ = false;
      ++finished_;
      done_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  uint64_t posted_ = 0;    // work items posted, in all
  uint64_t finished_ = 0;  // of which finished
  std::thread thread_;
};

/// A block of fake device memory; the deleter's context.
struct memory_block {
  void* data = nullptr;
  size_t bytes = 0;
  int device = 0;
  std::vector<c10::Stream> used_on;  // recordDataPtrOnStream: free only after these streams pass here
};

struct device_state {
  std::array<std::unique_ptr<stream_worker>, pool_streams + 1> streams;
  std::atomic<int> next_pool{0};
  std::mutex memory;
  std::condition_variable freed;  // a free that waited for streams has run
  uint64_t pending_frees = 0;     // frees posted to streams, not run yet
  uint64_t allocated = 0;
  uint64_t capacity = 1ull << 30;
  int fail_next = 0;
};

struct fake_event {
  std::mutex mutex;
  std::condition_variable reached;
  uint64_t recorded = 0;   // versions asked for
  uint64_t completed = 0;  // versions their stream has reached
};
using event_handle = std::shared_ptr<fake_event>;

/// The process-wide state; never destroyed (stream threads may outlive static destruction).
struct registry {
  std::array<device_state, max_devices> devices;
  std::atomic<int> device_count{0};
  std::atomic<double> copy_bytes_per_s{0};
  std::mutex install_mutex;
  bool installed = false;
};
registry& state() {
  static auto* r = new registry;
  return *r;
}

thread_local int current_device = 0;
thread_local std::array<c10::StreamId, max_devices> current_stream{};

stream_worker& worker(const c10::Stream& s) {
  auto& d = state().devices.at(static_cast<size_t>(s.device_index()));
  auto id = static_cast<size_t>(s.id());
  TORCH_CHECK(id <= pool_streams, "fake accelerator: unknown stream ", s.id());
  return *d.streams[id];
}

c10::Stream stream_of(int device, c10::StreamId id) {
  return c10::Stream(c10::Stream::UNSAFE, c10::Device(fake_type, static_cast<c10::DeviceIndex>(device)), id);
}

void pace(size_t bytes) {
  auto rate = state().copy_bytes_per_s.load();
  if (rate > 0)
    std::this_thread::sleep_for(std::chrono::duration<double>(static_cast<double>(bytes) / rate));
}

// -- the guard: devices, streams, events -------------------------------------------------------------

struct fake_guard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return fake_type; }
  c10::Device exchangeDevice(c10::Device d) const override {
    auto old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override {
    return c10::Device(fake_type, static_cast<c10::DeviceIndex>(current_device));
  }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.index() >= 0 && d.index() < state().device_count, "fake accelerator: no device ", int(d.index()));
    current_device = d.index();
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0)
      current_device = d.index();
  }
  c10::Stream getStream(c10::Device d) const noexcept override {
    auto index = d.index() < 0 ? current_device : d.index();
    return stream_of(index, current_stream[static_cast<size_t>(index)]);
  }
  c10::Stream getDefaultStream(c10::Device d) const override { return stream_of(d.index() < 0 ? current_device : d.index(), 0); }
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool) const override {
    auto index = d.index() < 0 ? current_device : d.index();
    auto& dev = state().devices.at(static_cast<size_t>(index));
    return stream_of(index, 1 + (dev.next_pool++ % pool_streams));
  }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override {
    auto& slot = current_stream[static_cast<size_t>(s.device_index())];
    auto old = stream_of(s.device_index(), slot);
    slot = s.id();
    return old;
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    return static_cast<c10::DeviceIndex>(state().device_count.load());
  }

  void record(void** event, const c10::Stream& stream, const c10::DeviceIndex, const c10::EventFlag) const override {
    if (!*event)
      *event = new event_handle(std::make_shared<fake_event>());
    auto ev = *static_cast<event_handle*>(*event);
    // Posted under the event's lock: a block() from another thread cannot slip its wait in before the
    // completion it waits for.
    std::lock_guard<std::mutex> guard{ev->mutex};
    auto version = ++ev->recorded;
    worker(stream).post([ev, version] {
      std::lock_guard<std::mutex> guard{ev->mutex};
      ev->completed = std::max(ev->completed, version);
      ev->reached.notify_all();
    });
  }
  void block(void* event, const c10::Stream& stream) const override {
    if (!event)
      return;
    auto ev = *static_cast<event_handle*>(event);
    uint64_t version;
    {
      std::lock_guard<std::mutex> guard{ev->mutex};
      version = ev->recorded;
    }
    worker(stream).post([ev, version] {
      std::unique_lock<std::mutex> guard{ev->mutex};
      ev->reached.wait(guard, [&] { return ev->completed >= version; });
    });
  }
  bool queryEvent(void* event) const override {
    if (!event)
      return true;
    auto ev = *static_cast<event_handle*>(event);
    std::lock_guard<std::mutex> guard{ev->mutex};
    return ev->completed >= ev->recorded;
  }
  void destroyEvent(void* event, const c10::DeviceIndex) const noexcept override {
    delete static_cast<event_handle*>(event);
  }
  bool queryStream(const c10::Stream& stream) const override { return worker(stream).idle(); }
  void synchronizeStream(const c10::Stream& stream) const override { worker(stream).drain(); }
  void recordDataPtrOnStream(const c10::DataPtr& data, const c10::Stream& stream) const override;
};

// -- memory ------------------------------------------------------------------------------------------

void free_block(memory_block* b, bool was_pending = false) {
  auto& d = state().devices.at(static_cast<size_t>(b->device));
  std::free(b->data);
  {
    std::lock_guard<std::mutex> guard{d.memory};
    d.allocated -= b->bytes;
    if (was_pending)
      --d.pending_frees;
  }
  d.freed.notify_all();
  delete b;
}

// A block used on other streams is freed only when each of them has passed the point where it was freed.
void release_block(void* context) {
  auto* b = static_cast<memory_block*>(context);
  if (b->used_on.empty()) {
    free_block(b);
    return;
  }
  auto left = std::make_shared<std::atomic<size_t>>(b->used_on.size());
  auto streams = b->used_on;
  {
    auto& d = state().devices.at(static_cast<size_t>(b->device));
    std::lock_guard<std::mutex> guard{d.memory};
    ++d.pending_frees;
  }
  for (const auto& s : streams)
    worker(s).post([b, left] {
      if (--*left == 0)
        free_block(b, /*was_pending=*/true);
    });
}

void fake_guard::recordDataPtrOnStream(const c10::DataPtr& data, const c10::Stream& stream) const {
  if (data.get_deleter() != &release_block)
    return;
  auto* b = static_cast<memory_block*>(data.get_context());
  auto& d = state().devices.at(static_cast<size_t>(b->device));
  std::lock_guard<std::mutex> guard{d.memory};
  for (const auto& s : b->used_on)
    if (s == stream)
      return;
  b->used_on.push_back(stream);
}

struct fake_allocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) MCACHE_ALLOCATE_CONST override {
    auto index = current_device;
    auto& d = state().devices.at(static_cast<size_t>(index));
    {
      std::unique_lock<std::mutex> lock{d.memory};
      bool injected = d.fail_next > 0;
      if (injected)
        --d.fail_next;
      // As CUDA's caching allocator does before it reports out-of-memory, wait for the frees whose streams
      // have not reached them yet (bounded: a stream blocked for good must not hang the allocation).
      if (!injected && d.allocated + bytes > d.capacity && d.pending_frees > 0)
        d.freed.wait_for(lock, std::chrono::seconds(2),
                         [&] { return d.allocated + bytes <= d.capacity || d.pending_frees == 0; });
      TORCH_CHECK_WITH(OutOfMemoryError, !injected && d.allocated + bytes <= d.capacity,
                       "fake accelerator ", index, ": out of memory allocating ", bytes, " bytes (", d.allocated,
                       " of ", d.capacity, " in use", injected ? ", failure injected" : "", ")");
      d.allocated += bytes;
    }
    auto* b = new memory_block;
    b->data = std::malloc(bytes ? bytes : 1);
    b->bytes = bytes;
    b->device = index;
    // Its allocation stream: freed memory is reused only once that stream has passed the free.
    b->used_on.push_back(stream_of(index, current_stream[static_cast<size_t>(index)]));
    return {b->data, b, &release_block, c10::Device(fake_type, static_cast<c10::DeviceIndex>(index))};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
#if MCACHE_ALLOCATOR_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
#endif
};
fake_allocator the_allocator;

// -- kernels -----------------------------------------------------------------------------------------

int device_of(c10::optional<at::Device> device) {
  return device && device->has_index() ? device->index() : current_device;
}

/// Makes `device` (or the current one) current while an allocation runs: the allocator reads it.
class on_device {
public:
  explicit on_device(c10::optional<at::Device> device) : previous_(current_device) { current_device = device_of(device); }
  ~on_device() { current_device = previous_; }
  on_device(const on_device&) = delete;
  on_device& operator=(const on_device&) = delete;

private:
  int previous_;
};

at::Tensor fake_empty(at::IntArrayRef size, c10::optional<at::ScalarType> dtype, c10::optional<at::Layout>,
                      c10::optional<at::Device> device, c10::optional<bool>, c10::optional<at::MemoryFormat> format) {
  on_device on{device};
  return at::detail::empty_generic(size, &the_allocator, c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), format);
}

at::Tensor fake_empty_strided(at::IntArrayRef size, at::IntArrayRef stride, c10::optional<at::ScalarType> dtype,
                              c10::optional<at::Layout>, c10::optional<at::Device> device, c10::optional<bool>) {
  on_device on{device};
  return at::detail::empty_strided_generic(size, stride, &the_allocator,
                                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                           c10::dtype_or_default(dtype));
}

// Both directions (and device to device): the copy runs on the current stream of the fake side.
at::Tensor fake_copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  TORCH_CHECK(self.scalar_type() == dst.scalar_type(), "fake accelerator: copies do not convert dtypes");
  TORCH_CHECK(self.numel() == dst.numel(), "fake accelerator: copies need the same number of elements");
  TORCH_CHECK(dst.is_contiguous(), "fake accelerator: copies need a contiguous destination");
  auto src = self.is_contiguous() ? self : self.contiguous();
  auto fake_side = dst.device().type() == fake_type ? dst.device() : src.device();
  auto stream = stream_of(fake_side.index(), current_stream[static_cast<size_t>(fake_side.index())]);
  auto bytes = src.nbytes();
  // As on CUDA, device memory is held by raw pointer only: what keeps it alive while the copy is queued is
  // the allocator's stream semantics (allocation stream, recordDataPtrOnStream), so a missing record shows
  // up as wrong data. Host memory is captured (CUDA stages pageable copies before returning).
  auto on_host = [](const at::Tensor& t) { return t.device().type() != fake_type; };
  at::Tensor host_keep = on_host(dst) ? dst : (on_host(src) ? src : at::Tensor());
  void* to = dst.data_ptr();
  const void* from = src.data_ptr();
  worker(stream).post([to, from, bytes, host_keep] {
    pace(bytes);
    if (bytes > 0)
      std::memcpy(to, from, bytes);
  });
  if (!non_blocking)
    worker(stream).drain();
  return dst;
}

} // namespace

C10_REGISTER_GUARD_IMPL(PrivateUse1, fake_guard);

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", fake_empty);
  m.impl("empty_strided", fake_empty_strided);
  m.impl("_copy_from", fake_copy_from);
}

void install(const options& o) {
  auto& r = state();
  std::lock_guard<std::mutex> guard{r.install_mutex};
  TORCH_CHECK(o.devices > 0 && o.devices <= max_devices, "fake accelerator: 1 to ", max_devices, " devices");
  for (int i = 0; i < o.devices; ++i) {
    auto& d = r.devices[static_cast<size_t>(i)];
    for (auto& s : d.streams)
      if (!s)
        s = std::make_unique<stream_worker>();
    std::lock_guard<std::mutex> memory{d.memory};
    d.capacity = o.capacity_bytes;
  }
  r.device_count = std::max(r.device_count.load(), o.devices);
  r.copy_bytes_per_s = o.copy_bytes_per_s;
  r.installed = true;
}

bool installed() {
  std::lock_guard<std::mutex> guard{state().install_mutex};
  return state().installed;
}

c10::Device device(int index) { return c10::Device(fake_type, static_cast<c10::DeviceIndex>(index)); }

void launch(const c10::Stream& stream, std::function<void()> work, uint64_t delay_us) {
  worker(stream).post([work = std::move(work), delay_us] {
    if (delay_us > 0)
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    work();
  });
}

void fail_next_allocations(int device, int count) {
  auto& d = state().devices.at(static_cast<size_t>(device));
  std::lock_guard<std::mutex> guard{d.memory};
  d.fail_next = count;
}

uint64_t allocated_bytes(int device) {
  auto& d = state().devices.at(static_cast<size_t>(device));
  std::lock_guard<std::mutex> guard{d.memory};
  return d.allocated;
}

uint64_t capacity_bytes(int device) {
  auto& d = state().devices.at(static_cast<size_t>(device));
  std::lock_guard<std::mutex> guard{d.memory};
  return d.capacity;
}

} // namespace mcache::fake_accelerator
