// One contract for every device backend, from the same test code: built three times, against the
// simulated device, the fake accelerator (ctest label `accelerator`) and CUDA (label `gpu`; where LibTorch
// sees no GPU every case passes at once with a message saying it did not run).
// MCACHE_BACKEND_UNDER_TEST: 0 simulated, 1 fake accelerator, 2 CUDA.

#include "runtime/core/transfer/staging_ring.hpp"
#include "runtime/core/transfer/tensor_stream.hpp"
#include "runtime/core/transfer/torch_backend.hpp"
#include "runtime/runtime.hpp"
#if MCACHE_BACKEND_UNDER_TEST == 1
#include "runtime/core/transfer/fake_accelerator.hpp"
#endif

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "support/catch.hpp"

using namespace mcache;

namespace {

constexpr int64_t floats = 64 * 1024;  // 256 KiB per layer

struct under_test {
  const char* name;
  device_kind kind;
  c10::DeviceType type;
};

under_test backend_under_test() {
#if MCACHE_BACKEND_UNDER_TEST == 0
  return {"simulated", device_kind::simulated, c10::DeviceType::CPU};
#elif MCACHE_BACKEND_UNDER_TEST == 1
  // Copies at 200 MB/s (a layer in 1.3 ms): a copy whose completion nobody waits for is read too early.
  fake_accelerator::install({2, 1ull << 30, 200e6});
  return {"fake accelerator", device_kind::accelerator, c10::DeviceType::PrivateUse1};
#else
  return {"cuda", device_kind::cuda, c10::DeviceType::CUDA};
#endif
}

/// False (with a message) where the backend under test has fewer than `devices` devices here.
bool available(const under_test& b, int devices = 1) {
  if (b.kind == device_kind::simulated || torch_device_count(b.type) >= devices)
    return true;
  WARN("not run: LibTorch sees " << torch_device_count(b.type) << " " << b.name << " device(s) here; this needs "
                                 << devices);
  return false;
}

std::shared_ptr<device_backend> make_backend(const under_test& b) {
  if (b.kind == device_kind::simulated)
    return make_simulated_backend(0, {});
  return make_torch_backend(c10::Device(b.type, 0));
}

std::shared_ptr<host_model> layers(int n) {
  auto m = std::make_shared<host_model>();
  m->id = "layers";
  for (int i = 0; i < n; ++i)
    m->tensors.push_back({"l" + std::to_string(i), at::arange(floats, at::kFloat) * static_cast<float>(i + 1)});
  return m;
}

} // namespace

TEST_CASE("contract: a device copy is complete when copy_in returns and equals the host copy") {
  auto b = backend_under_test();
  if (!available(b))
    return;
  auto backend = make_backend(b);
  auto host = layers(4);
  auto copy = backend->copy_in(*host, {3, 1});
  REQUIRE(copy->tensors.size() == 2);
  CHECK(copy->tensors[0].tensor.to(at::kCPU).equal(host->tensors[3].tensor));
  CHECK(copy->tensors[1].tensor.to(at::kCPU).equal(host->tensors[1].tensor));
  CHECK(copy->device_bytes >= 2 * floats * 4);
}

TEST_CASE("contract: streaming through a pin's ring gives every layer in order, and out of order too") {
  auto b = backend_under_test();
  if (!available(b))
    return;
  std::shared_ptr<device_backend> backend = make_backend(b);
  auto host = layers(6);
  device_pin pin;
  pin.view = std::make_shared<device_model>(device_model{std::vector<named_tensor>(6), 0});
  pin.host = host;
  pin.backend = backend;
  pin.staging_slots = 2;
  pin.staging_bytes = 2 * floats * 4;
  auto ring = std::make_shared<staging_ring>(backend, 2, static_cast<bytes_t>(floats * 4));
  for (int pass = 0; pass < 2; ++pass) {
    tensor_stream stream{pin, ring};
    for (size_t i = 0; i < 6; ++i)
      CHECK(stream.get(i).to(at::kCPU).equal(host->tensors[i].tensor));
  }
  {
    tensor_stream stream{pin, ring};
    for (size_t i : {4, 1, 5, 0})
      CHECK(stream.get(i).to(at::kCPU).equal(host->tensors[i].tensor));
  }
  CHECK(ring->allocations() == 1);
}

TEST_CASE("contract: a runtime pins a model partly, streams the rest, and offloads it to zero") {
  auto b = backend_under_test();
  if (!available(b))
    return;
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.check_invariants = true;
  device_options d;
  d.kind = b.kind;
  d.budget_bytes = 4 * floats * 4 + 8192;  // 2 layers resident beside a ring of 2
  o.devices = {d};
  runtime rt{o};
  model_descriptor m;
  m.id = "layers";
  m.bytes = 6 * floats * 4;
  m.loader = [](const model_descriptor&) { return std::shared_ptr<const host_model>(layers(6)); };
  rt.models().add(m);
  auto s = rt.open_session();
  auto lease = s.acquire("layers");
  {
    auto pin = s.pin(lease, 0);
    CHECK(pin.partial());
    auto stream = pin.stream();
    for (size_t i = 0; i < 6; ++i)
      CHECK(stream.get(i).to(at::kCPU).equal(lease.host().tensors[i].tensor));
  }
  CHECK(s.offload(0) > 0);
  CHECK(rt.stats().devices[0].used_bytes == 0);
}

TEST_CASE("contract: without a kept RAM copy, a model evicted from RAM comes back from the device, and offload copies it back") {
  auto b = backend_under_test();
  if (!available(b))
    return;
  constexpr bytes_t opaque_bytes = 4096;
  const bytes_t model_bytes = 4 * floats * 4 + opaque_bytes;
  auto note = std::make_shared<const std::string>("tokenizer");
  auto add = [&](runtime& rt, const model_id& id) {
    model_descriptor m;
    m.id = id;
    m.bytes = model_bytes;
    m.loader = [note](const model_descriptor& self) {
      auto h = layers(4);
      h->id = self.id;
      h->opaque = note;
      h->opaque_bytes = opaque_bytes;
      return std::shared_ptr<const host_model>(std::move(h));
    };
    rt.models().add(m);
  };
  runtime_options o;
  o.ram_budget_bytes = model_bytes + model_bytes / 2;  // one model at a time
  o.keep_ram_copy = false;
  o.check_invariants = true;
  device_options d;
  d.kind = b.kind;
  d.budget_bytes = 3 * model_bytes;
  o.devices = {d};
  runtime rt{o};
  add(rt, "x");
  add(rt, "y");
  auto s = rt.open_session();
  auto expect_x = [&](const lease& l) {
    auto want = layers(4);
    REQUIRE(l.host().tensors.size() == 4);
    for (size_t i = 0; i < 4; ++i)
      CHECK(l.host().tensors[i].tensor.equal(want->tensors[i].tensor));
    CHECK(l.host().opaque == note);
    CHECK(l.host().opaque_bytes == opaque_bytes);
  };
  {
    auto x = s.acquire("x");
    s.pin(x, 0).release();
  }
  s.acquire("y").release();  // evicts 'x' from RAM: device 0 holds the only copy
  CHECK(rt.stats().ram.hand_overs == 1);
  {
    auto x = s.acquire("x");  // copied back from device 0, not read from disk
    expect_x(x);
    auto st = rt.stats().ram;
    CHECK(st.loads == 2);
    CHECK(st.device_fetches == 1);
    CHECK(st.bytes_from_devices == model_bytes);
  }
  s.acquire("y").release();  // 'x' leaves RAM again
  s.trim_ram();              // RAM is empty: room for a copy back
  CHECK(s.offload(0) > 0);   // the only copy of 'x' goes back to RAM before it is freed
  CHECK(rt.stats().devices[0].used_bytes == 0);
  {
    auto x = s.acquire("x");  // a hit, or joins the copy back in flight: never the disk
    expect_x(x);
  }
  auto st = rt.stats().ram;
  CHECK(st.copy_backs == 1);
  CHECK(st.loads == 3);  // x, y, and y again
  CHECK(st.bytes_from_devices == 2 * model_bytes);
}

TEST_CASE("contract: one model pinned on two devices at once has a copy on each, and offloading one leaves the other") {
  auto b = backend_under_test();
  if (!available(b, 2))
    return;
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.check_invariants = true;
  for (int index : {0, 1}) {
    device_options d;
    d.kind = b.kind;
    d.index = index;
    d.budget_bytes = 8 * floats * 4;
    o.devices.push_back(d);
  }
  runtime rt{o};
  model_descriptor m;
  m.id = "layers";
  m.bytes = 4 * floats * 4;
  m.loader = [](const model_descriptor&) { return std::shared_ptr<const host_model>(layers(4)); };
  rt.models().add(m);
  if (b.kind != device_kind::simulated) {
    CHECK(rt.torch_device(0) == c10::Device(b.type, 0));
    CHECK(rt.torch_device(1) == c10::Device(b.type, 1));
  }
  auto s = rt.open_session();
  auto lease = s.acquire("layers");
  auto expect_on = [&](const pin_handle& pin, device_index d) {
    CHECK(pin.device() == d);
    CHECK(pin.torch_device() == rt.torch_device(d));
    const auto& copy = pin.tensors().tensors;
    REQUIRE(copy.size() == 4);
    for (size_t i = 0; i < 4; ++i) {
      CHECK(copy[i].tensor.device() == rt.torch_device(d));
      CHECK(copy[i].tensor.to(at::kCPU).equal(lease.host().tensors[i].tensor));
    }
  };
  auto on0 = s.pin(lease, 0);
  auto on1 = s.pin(lease, 1);
  expect_on(on0, 0);
  expect_on(on1, 1);
  auto st = rt.stats();
  CHECK(st.devices[0].used_bytes >= m.bytes);
  CHECK(st.devices[1].used_bytes >= m.bytes);
  const auto used_on_1 = st.devices[1].used_bytes;
  on0.release();
  CHECK(s.offload(0) > 0);
  CHECK(rt.stats().devices[0].used_bytes == 0);
  CHECK(rt.stats().devices[1].used_bytes == used_on_1);
  expect_on(on1, 1);
}
