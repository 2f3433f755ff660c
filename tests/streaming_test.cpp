// Partial residency and streaming through the runtime, with real copies on simulated devices.

#include "runtime/runtime.hpp"

#include "support/catch.hpp"

#include <ATen/ATen.h>

using namespace mcache;
using namespace std::chrono_literals;

namespace {

constexpr int layers = 6;
constexpr int64_t width = 128;                        // a layer is width x width float32: 64 KiB
constexpr bytes_t layer_bytes = width * width * 4;

/// A toy network: `layers` linear layers with a ReLU between them, plus a small required norm vector.
model_descriptor toy_network() {
  model_descriptor d;
  d.id = "toy";
  d.bytes = layers * layer_bytes + width * 4;
  d.required_tensors = {"norm"};
  d.loader = [](const model_descriptor& self) {
    auto m = std::make_shared<host_model>();
    m->id = self.id;
    m->tensors.push_back({"norm", at::linspace(0.5, 1.5, width)});
    for (int l = 0; l < layers; ++l) {
      auto gen = at::arange(width * width, at::kFloat).reshape({width, width});
      m->tensors.push_back({"layer" + std::to_string(l), at::sin(gen * (0.001 * (l + 1))) / width});
    }
    return std::shared_ptr<const host_model>(std::move(m));
  };
  return d;
}

at::Tensor forward(const pin_handle& pin) {
  auto stream = pin.stream();
  auto x = at::linspace(-1, 1, width);
  x = x * stream.get(0);  // the norm: required, so always resident
  for (size_t i = 1; i < stream.size(); ++i)
    x = at::relu(at::matmul(stream.get(i), x));
  return x;
}

runtime_options three_devices() {
  runtime_options o;
  o.ram_budget_bytes = 16 << 20;
  o.check_invariants = true;
  auto whole = layers * layer_bytes + width * 4;
  o.devices = {
    {device_kind::simulated, 2 * whole, 0, 0},                      // everything resident
    {device_kind::simulated, whole / 2 + 2 * layer_bytes, 0, 0},    // about half resident
    {device_kind::simulated, 2 * layer_bytes + width * 4 + 4096, 0, 0},  // the norm, the staging ring, 4 KiB
  };
  return o;
}

} // namespace

TEST_CASE("a toy network gives the same output resident, partly resident and fully streamed") {
  runtime rt{three_devices()};
  REQUIRE_FALSE(rt.models().add(toy_network()));
  auto s = rt.open_session();
  auto lease = s.acquire("toy");
  std::vector<at::Tensor> outputs;
  std::vector<bytes_t> resident;
  for (device_index d = 0; d < 3; ++d) {
    auto pin = s.pin(lease, d);
    resident.push_back(pin.resident_bytes());
    outputs.push_back(forward(pin));
  }
  CHECK(resident[0] == layers * layer_bytes + width * 4);
  CHECK(resident[1] > width * 4);
  CHECK(resident[1] < resident[0]);
  CHECK(resident[2] == width * 4);
  CHECK(outputs[0].equal(outputs[1]));
  CHECK(outputs[0].equal(outputs[2]));
  auto reference = forward(s.pin(lease, cpu_device));
  CHECK(outputs[0].equal(reference));
  auto st = rt.stats();
  CHECK(st.devices[0].streamed_bytes == 0);
  CHECK(st.devices[2].streamed_bytes == layers * layer_bytes);
  CHECK(st.devices[2].partial_loads == 1);
}

TEST_CASE("streamed and resident tensors have the same values") {
  runtime rt{three_devices()};
  REQUIRE_FALSE(rt.models().add(toy_network()));
  auto s = rt.open_session();
  auto lease = s.acquire("toy");
  auto pin = s.pin(lease, 1);
  REQUIRE(pin.partial());
  auto stream = pin.stream();
  size_t streamed = 0;
  for (size_t i = 0; i < stream.size(); ++i) {
    INFO(stream.name(i));
    streamed += !stream.resident(i);
    CHECK(stream.get(i).equal(lease.host().tensors[i].tensor));
  }
  CHECK(streamed > 0);
  // Out of order works too (it waits for the ring, then copies what was asked).
  CHECK(stream.get(1).equal(lease.host().tensors[1].tensor));
  CHECK(stream.get(stream.size() - 1).equal(lease.host().tensors.back().tensor));
}

TEST_CASE("a streaming pin reserves its staging ring as working memory and gives it back") {
  runtime rt{three_devices()};
  REQUIRE_FALSE(rt.models().add(toy_network()));
  auto s = rt.open_session();
  auto lease = s.acquire("toy");
  {
    auto pin = s.pin(lease, 2, 1024);
    CHECK(pin.grant().staging_bytes == 2 * layer_bytes);
    CHECK(pin.working_bytes() == 1024 + 2 * layer_bytes);
    CHECK(rt.stats().devices[2].working_bytes == 1024 + 2 * layer_bytes);
  }
  CHECK(rt.stats().devices[2].working_bytes == 0);
}

TEST_CASE("a pin's staging ring is allocated once, however many passes stream through it") {
  runtime rt{three_devices()};
  rt.models().add(toy_network());
  auto s = rt.open_session();
  auto lease = s.acquire("toy");
  auto pin = s.pin(lease, 2);
  REQUIRE(pin.partial());
  auto first = forward(pin);
  for (int pass = 0; pass < 3; ++pass)
    CHECK(forward(pin).equal(first));
  CHECK(pin.staging().allocations() == 1);
}

TEST_CASE("a stream of a released pin fails, and a pin streams one stream at a time") {
  runtime rt{three_devices()};
  rt.models().add(toy_network());
  auto s = rt.open_session();
  auto lease = s.acquire("toy");
  auto pin = s.pin(lease, 2);
  {
    auto stream = pin.stream();
    try {
      auto second = pin.stream();
      FAIL("a second stream of the same pin was allowed");
    } catch (const request_error& e) {
      CHECK(e.code() == errc::invalid_argument);
    }
    stream.get(1);
    pin.release();
    try {
      stream.get(2);
      FAIL("a stream outlived its pin");
    } catch (const request_error& e) {
      CHECK(e.code() == errc::invalid_pin);
    }
  }
  CHECK_THROWS_AS(pin.stream(), request_error);
  CHECK(rt.stats().devices[2].pins_active == 0);
}
