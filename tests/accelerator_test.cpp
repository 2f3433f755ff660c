// The device-generic backend (torch_backend) on the fake accelerator (Note [Fake accelerator]): its
// streams are threads, so a missing wait shows up as wrong data. ctest label `accelerator`.

#include "runtime/core/transfer/fake_accelerator.hpp"
#include "runtime/core/transfer/staging_ring.hpp"
#include "runtime/core/transfer/tensor_stream.hpp"
#include "runtime/core/transfer/torch_backend.hpp"
#include "runtime/metrics.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "support/catch.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

using namespace mcache;

namespace {

constexpr int64_t floats = 16 * 1024;  // 64 KiB per tensor

/// The fake with slow copies (64 KiB in about 1.3 ms), so that a kernel that does not wait reads too early.
void install_slow_fake() { fake_accelerator::install({2, 256ull << 20, 50e6}); }

std::shared_ptr<host_model> layers(int n) {
  auto m = std::make_shared<host_model>();
  m->id = "layers";
  for (int i = 0; i < n; ++i)
    m->tensors.push_back({"l" + std::to_string(i), at::full({floats}, static_cast<float>(i + 1))});
  return m;
}

/// A runtime over fake accelerator `index` with `budget` bytes, holding a model "layers" of `n` layers.
runtime_options accelerator_options(int index, bytes_t budget) {
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.check_invariants = true;
  device_options d;
  d.kind = device_kind::accelerator;
  d.index = index;
  d.budget_bytes = budget;
  o.devices = {d};
  return o;
}
/// keep_ram_copy = false (Note [Copy back instead of a kept RAM copy]) over fake accelerator 1, whose 256
/// MiB are all the budget, with `ram` bytes of RAM.
runtime_options copy_back_options(bytes_t ram) {
  auto o = accelerator_options(1, 256ull << 20);
  o.ram_budget_bytes = ram;
  o.keep_ram_copy = false;
  return o;
}
model_descriptor layers_model(int n) {
  model_descriptor m;
  m.id = "layers";
  m.bytes = static_cast<bytes_t>(n) * floats * 4;
  m.loader = [n](const model_descriptor&) { return std::shared_ptr<const host_model>(layers(n)); };
  return m;
}

/// A pin of `layers(n)` with nothing resident, so every layer streams through two staging slots.
device_pin all_streamed(int n, std::shared_ptr<device_backend> backend) {
  device_pin pin;
  pin.model = "layers";
  pin.view = std::make_shared<device_model>(device_model{std::vector<named_tensor>(static_cast<size_t>(n)), 0});
  pin.host = layers(n);
  pin.backend = std::move(backend);
  pin.staging_slots = 2;
  pin.staging_bytes = 2 * floats * 4;
  return pin;
}

float sum_on_cpu(const at::Tensor& t) {
  const auto* p = static_cast<const float*>(t.data_ptr());
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i)
    s += p[i];
  return static_cast<float>(s);
}

} // namespace

TEST_CASE("a copy to the accelerator is complete when reported and equal to the host copy") {
  install_slow_fake();
  auto backend = make_torch_backend(fake_accelerator::device(0));
  auto host = layers(3);
  auto copy = backend->copy_in(*host, {0, 2});
  REQUIRE(copy->tensors.size() == 2);
  CHECK(copy->tensors[0].tensor.device() == fake_accelerator::device(0));
  // No synchronization here: copy_in returned, so the bytes are there.
  CHECK(copy->tensors[0].tensor.to(at::kCPU).equal(host->tensors[0].tensor));
  CHECK(copy->tensors[1].tensor.to(at::kCPU).equal(host->tensors[2].tensor));
  CHECK(copy->device_bytes == 2 * floats * 4);
}

TEST_CASE("an allocation failure on the accelerator becomes device_oom_error and leaves nothing allocated") {
  install_slow_fake();
  auto backend = make_torch_backend(fake_accelerator::device(1));
  auto before = fake_accelerator::allocated_bytes(1);
  auto host = layers(2);
  fake_accelerator::fail_next_allocations(1, 1);
  CHECK_THROWS_AS(backend->copy_in(*host, {0, 1}), device_oom_error);
  CHECK(fake_accelerator::allocated_bytes(1) == before);
}

TEST_CASE("a device that LibTorch does not have is refused with the count it has") {
  install_slow_fake();
  CHECK_THROWS_AS(make_torch_backend(fake_accelerator::device(7)), std::invalid_argument);
  // One past the GPUs this LibTorch sees: cuda:0 where it has no CUDA, the GPU after the last where it has.
  auto gpus = torch_device_count(c10::DeviceType::CUDA);
  CHECK_THROWS_AS(make_torch_backend(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(gpus))),
                  std::invalid_argument);
}

TEST_CASE("streaming through two slots: every fake kernel reads its own layer, whichever side is slower") {
  // The consumer runs fake kernels on its own stream, reading each streamed layer at the end of a delay.
  //   Slow copies, quick kernels: without the consumer stream waiting for a slot's fill, a kernel reads
  //   before its copy lands.
  //   Quick copies, slow kernels: without the copy stream waiting for the consumer's give-back, the next
  //   fill overwrites a slot before the kernel reading it is done.
  // Either gives a wrong sum.
  struct timing {
    double copy_bytes_per_s;
    uint64_t kernel_us;
  };
  auto t = GENERATE(timing{10e6, 500}, timing{50e6, 6000});
  fake_accelerator::install({2, 256ull << 20, t.copy_bytes_per_s});
  auto device = fake_accelerator::device(0);
  std::shared_ptr<device_backend> backend = make_torch_backend(device);
  auto pin = all_streamed(8, backend);
  c10::impl::VirtualGuardImpl guard{device.type()};
  auto consumer = guard.getStreamFromGlobalPool(device);
  std::vector<float> sums(8, -1);
  {
    c10::StreamGuard on_consumer{consumer};
    tensor_stream stream{pin};
    for (size_t i = 0; i < 8; ++i) {
      auto tensor = stream.get(i);
      fake_accelerator::launch(consumer, [tensor, &sums, i] { sums[i] = sum_on_cpu(tensor); }, t.kernel_us);
    }
  }
  guard.synchronizeStream(consumer);
  for (size_t i = 0; i < 8; ++i)
    CHECK(sums[i] == static_cast<float>((i + 1) * floats));
}

TEST_CASE("a pin's staging ring dropped while a kernel on another stream still reads its last slot keeps that memory until the kernel is done") {
  install_slow_fake();
  auto device = fake_accelerator::device(1);
  std::shared_ptr<device_backend> backend = make_torch_backend(device);
  auto pin = all_streamed(2, backend);
  c10::impl::VirtualGuardImpl guard{device.type()};
  auto consumer = guard.getStreamFromGlobalPool(device);
  auto before = fake_accelerator::allocated_bytes(1);
  // The pin's ring, as pin_handle keeps it: allocated by a first pass on the current (default) stream, so
  // the allocator ties its blocks to that stream, not to the consumer's below.
  auto ring = std::make_shared<staging_ring>(backend, 2, floats * 4);
  {
    tensor_stream first{pin, ring};
    first.get(0);
    first.get(1);
  }
  guard.synchronizeStream(guard.getStream(device));
  std::atomic<bool> may_finish{false};
  std::atomic<float> read{-1};
  bytes_t with_ring = 0;
  {
    c10::StreamGuard on_consumer{consumer};
    tensor_stream second{pin, ring};
    second.get(0);
    // The kernel holds only the address of the last streamed layer, as a CUDA kernel does.
    const float* data = second.get(1).data_ptr<float>();
    fake_accelerator::launch(consumer, [&read, &may_finish, data] {
      while (!may_finish)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      read = data[floats - 1];
    });
    with_ring = fake_accelerator::allocated_bytes(1);
  }
  ring.reset();  // the pin ends while the consumer's kernel has yet to read
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // room for a free that does not wait to happen
  CHECK(with_ring > before);
  CHECK(fake_accelerator::allocated_bytes(1) == with_ring);  // the slot is kept for the consumer's kernel
  may_finish = true;
  guard.synchronizeStream(consumer);
  CHECK(read == 2.0f);
  for (int i = 0; i < 1000 && fake_accelerator::allocated_bytes(1) != before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(fake_accelerator::allocated_bytes(1) == before);  // then the whole ring goes
}

TEST_CASE("a released pin's memory is not reused before the kernels enqueued on it have run") {
  install_slow_fake();
  auto device = fake_accelerator::device(1);
  auto backend = make_torch_backend(device);
  auto host = layers(1);
  auto before = fake_accelerator::allocated_bytes(1);
  auto copy = backend->copy_in(*host, {0});
  c10::impl::VirtualGuardImpl guard{device.type()};
  auto consumer = guard.getStreamFromGlobalPool(device);
  std::atomic<bool> read{false};
  std::atomic<bool> may_finish{false};  // the kernel runs until the test has looked (a fixed delay did not
                                        // hold on a loaded machine: the kernel ended before the check)
  {
    c10::StreamGuard on_consumer{consumer};
    // The kernel holds a raw pointer, as a CUDA kernel does: only the allocator's record keeps the memory.
    // (Holding the tensor would keep it alive by itself, and the test could not tell a missing record.)
    const float* data = copy->tensors[0].tensor.data_ptr<float>();
    fake_accelerator::launch(consumer, [&read, &may_finish, data] {
      while (!may_finish)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      read = data[floats - 1] > 0;
    });
    backend->mark_in_use(*copy, {});
  }
  copy.reset();  // the pin is gone; a kernel on the consumer stream still reads its tensor
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // room for a free that does not wait to happen
  CHECK(fake_accelerator::allocated_bytes(1) > before);
  may_finish = true;
  guard.synchronizeStream(consumer);
  CHECK(read);
  // The free runs once every stream that used the block has passed it: the consumer (just synchronized)
  // and the allocation stream, whose worker may get to it a moment later on a loaded machine.
  for (int i = 0; i < 1000 && fake_accelerator::allocated_bytes(1) != before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(fake_accelerator::allocated_bytes(1) == before);
}

TEST_CASE("asking for CUDA of a LibTorch without it, or a device it lacks, fails at start with the reason") {
  install_slow_fake();
  runtime_options o;
  o.ram_budget_bytes = 1 << 20;
  device_options cuda;
  cuda.kind = device_kind::cuda;
  cuda.budget_bytes = 1 << 20;
  device_options missing;
  missing.kind = device_kind::accelerator;
  missing.index = 5;
  missing.budget_bytes = 1 << 20;
  for (const auto& d : {cuda, missing}) {
    o.devices = {d};
    try {
      runtime rt{o};
      if (d.kind == device_kind::cuda && torch_device_count(c10::DeviceType::CUDA) > 0)
        continue;  // a CUDA LibTorch on a GPU machine
      FAIL("the runtime started");
    } catch (const request_error& e) {
      CHECK(e.code() == errc::invalid_argument);
      CHECK(std::string{e.what()}.find("LibTorch sees") != std::string::npos);
    }
  }
}

TEST_CASE("two tiers on one device, or an index past any LibTorch can name, are refused at start") {
  install_slow_fake();
  auto o = accelerator_options(1, 1 << 20);
  auto d = o.devices.front();
  o.devices = {d, d};  // each tier would count the device's memory as its own
  auto error_of = [&] {
    try {
      runtime rt{o};
    } catch (const request_error& e) {
      CHECK(e.code() == errc::invalid_argument);
      return std::string{e.what()};
    }
    return std::string{"started"};
  };
  CHECK_THAT(error_of(), Catch::Contains("device 1: privateuseone:1 is device 0 already"));
  d.index = 300;  // a c10::DeviceIndex is 8 bits: this was narrowed to device 44
  o.devices = {d};
  CHECK_THAT(error_of(), Catch::Contains("index 300 is past any device LibTorch can name"));
}

TEST_CASE("a pin used on one stream and released on another thread keeps its memory until that stream is done") {
  install_slow_fake();
  runtime rt{accelerator_options(1, 16 * floats * 4)};
  rt.models().add(layers_model(2));
  auto s = rt.open_session();
  auto lease = s.acquire("layers");
  auto before = fake_accelerator::allocated_bytes(1);
  auto pin = s.pin(lease, 0);
  auto device = fake_accelerator::device(1);
  c10::impl::VirtualGuardImpl guard{device.type()};
  auto worker_stream = guard.getStreamFromGlobalPool(device);
  std::atomic<bool> read{false};
  std::atomic<bool> may_finish{false};  // the kernel runs until the test has looked, however loaded the machine
  std::thread worker{[&] {
    c10::StreamGuard on{worker_stream};
    auto t = pin.tensor("l0");
    // The kernel holds a raw pointer, as a CUDA kernel does: only the allocator's record keeps the memory.
    const float* data = static_cast<const float*>(t.data_ptr());
    fake_accelerator::launch(worker_stream, [&read, &may_finish, data] {
      while (!may_finish)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      read = data[floats - 1] > 0;
    });
  }};
  worker.join();
  pin.release();  // on this thread, whose current stream is another one
  s.offload(0);   // the tier drops the device copy (freed on the copy queue, right after)
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(fake_accelerator::allocated_bytes(1) > before);  // the worker's kernel still reads it
  may_finish = true;
  guard.synchronizeStream(worker_stream);
  CHECK(read);
  // The copy queue frees off the actor thread: give it a moment after the stream is done.
  for (int i = 0; i < 200 && fake_accelerator::allocated_bytes(1) > before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(fake_accelerator::allocated_bytes(1) == before);
}

TEST_CASE("an only copy dropped to make room goes back to RAM before the copy it makes room for, so the device never overflows") {
  fake_accelerator::install({2, 256ull << 20, 0});  // capacity: the budget below, nothing more
  constexpr int64_t big = 25ll << 18;                // 25 MiB of floats per tensor, 4 tensors: 100 MiB a model
  auto add = [](runtime& rt, const model_id& id) {
    rt.models().add(synthetic_model(id, {big, big, big, big}));
  };
  runtime rt{copy_back_options(220ull << 20)};
  add(rt, "a");
  add(rt, "b");
  add(rt, "c");
  auto s = rt.open_session();
  for (auto m : {"a", "b"}) {
    auto l = s.acquire(m);
    s.pin(l, 0).release();
  }
  s.trim_ram("a");  // device 1 now holds the only copy of 'a'
  s.trim_ram("b");
  REQUIRE(rt.stats().ram.hand_overs == 2);
  {
    auto l = s.acquire("c");
    auto p = s.pin(l, 0);  // room: 'a' (least recently used) goes back to RAM, then 'c' is copied in
    CHECK(p.resident_bytes() == 100ull << 20);
  }
  auto st = rt.stats();
  CHECK(st.devices[0].oom_retries == 0);
  CHECK(st.devices[0].copy_failures == 0);
  for (int i = 0; i < 200 && rt.stats().ram.copy_backs == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(rt.stats().ram.copy_backs == 1);
}

// Note [Grants wait for the frees before them] (device_actor.cpp), on the threaded path.
TEST_CASE("a pin whose working memory needed an only copy gone is granted once the copy back has freed that memory") {
  fake_accelerator::install({2, 256ull << 20, 400e6});  // capacity: the budget; copies at 400 MB/s
  constexpr int64_t big = 25ll << 18;                   // 100 MiB a model
  runtime rt{copy_back_options(330ull << 20)};
  for (auto m : {"a", "c"})
    rt.models().add(synthetic_model(m, {big, big, big, big}));
  auto s = rt.open_session();
  {
    auto l = s.acquire("a");
    s.pin(l, 0).release();
  }
  s.trim_ram("a");  // device 1 now holds the only copy of 'a'
  REQUIRE(rt.stats().ram.hand_overs == 1);
  auto c = s.acquire("c");
  s.pin(c, 0).release();
  constexpr bytes_t working = 150ull << 20;  // 56 MiB free: 'a' must go, back to RAM (about 0.26 s)
  auto p = s.pin(c, 0, working);
  CHECK(p.working_bytes() == working);
  // The caller allocates its working memory now: the only copy's memory must be freed already (or be a
  // free waiting on its stream, which the allocator waits for, as CUDA's does), not still being copied.
  at::Tensor scratch;
  CHECK_NOTHROW(scratch = at::empty({static_cast<int64_t>(working / 4)},
                                    at::TensorOptions().dtype(at::kFloat).device(fake_accelerator::device(1))));
  scratch.reset();
  p.release();
  CHECK(rt.stats().ram.copy_backs == 1);
}

TEST_CASE("two accelerators under one scheduler: each stage works with its own device current, its pins and its own tensors there") {
  // Without the stage making its device current, a tensor the work makes without an index (as a user's
  // `at::kCUDA` does) would be device 0's whatever the stage's device, away from the stage's pins.
  install_slow_fake();
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.check_invariants = true;
  for (int index : {0, 1}) {
    device_options d;
    d.kind = device_kind::accelerator;
    d.index = index;
    d.budget_bytes = 6 * floats * 4;  // three of the models below
    o.devices.push_back(d);
  }
  runtime rt{o};
  const std::vector<std::string> models{"a", "b", "c", "d"};
  for (const auto& id : models) {
    auto m = layers_model(2);
    m.id = id;
    rt.models().add(m);
  }
  scheduler_options so;
  so.workers_per_device = 1;
  scheduler sched{rt, so};
  std::mutex mutex;
  std::set<device_index> devices_used;
  std::vector<std::string> wrong;
  auto note_wrong = [&](std::string what) {
    std::lock_guard<std::mutex> guard{mutex};
    wrong.push_back(std::move(what));
  };
  std::vector<job_handle> jobs;
  for (int j = 0; j < 16; ++j) {
    const auto model = models[static_cast<size_t>(j) % models.size()];
    job_spec spec;
    spec.name = "job " + std::to_string(j);
    stage_spec st;
    st.models = {model};
    st.work = [&, model](stage_context& ctx) {
      const auto here = ctx.torch_device();
      {
        std::lock_guard<std::mutex> guard{mutex};
        devices_used.insert(ctx.device());
      }
      if (here != fake_accelerator::device(ctx.device()))  // devices 0 and 1 are fake accelerators 0 and 1
        note_wrong("stage on device " + std::to_string(ctx.device()) + " names " + here.str());
      c10::impl::VirtualGuardImpl guard{here.type()};
      if (guard.getDevice() != here)
        note_wrong(here.str() + " is not current: " + guard.getDevice().str() + " is");
      auto mine = at::empty({floats}, at::TensorOptions().dtype(at::kFloat).device(here.type()));
      if (mine.device() != here)
        note_wrong("a tensor made without an index went to " + mine.device().str() + ", not " + here.str());
      for (const auto& t : ctx.pin(model).tensors().tensors)
        if (t.tensor.device() != here)
          note_wrong("a pinned tensor of '" + model + "' is on " + t.tensor.device().str() + ", not " + here.str());
      // A fake kernel on the current stream reads both layers of the copy (values 1 and 2).
      auto l0 = ctx.pin(model).tensor("l0");
      auto l1 = ctx.pin(model).tensor("l1");
      auto stream = guard.getStream(here);
      std::atomic<float> sum{0};
      fake_accelerator::launch(stream, [&sum, l0, l1] { sum = sum_on_cpu(l0) + sum_on_cpu(l1); }, 2000);
      guard.synchronizeStream(stream);
      if (sum != static_cast<float>(3 * floats))
        note_wrong("the kernel on " + here.str() + " read " + std::to_string(sum.load()));
    };
    spec.stages.push_back(std::move(st));
    jobs.push_back(sched.submit(std::move(spec)));
  }
  for (auto& j : jobs) {
    auto status = j.wait();
    CHECK(status.state == job_state::done);
    if (status.error)
      FAIL_CHECK(status.error->detail);
  }
  for (const auto& w : wrong)
    FAIL_CHECK(w);
  CHECK(devices_used == std::set<device_index>{0, 1});
  auto st = rt.stats();
  CHECK(st.devices[0].bytes_copied_in > 0);
  CHECK(st.devices[1].bytes_copied_in > 0);
  // Operators see which index is which device.
  auto metrics = prometheus_text(rt);
  CHECK(metrics.find("mcache_device_info{device=\"1\",torch_device=\"privateuseone:1\"} 1") != std::string::npos);
  CHECK(rt.status_json().find("\"torch_device\":\"privateuseone:0\"") != std::string::npos);
}
