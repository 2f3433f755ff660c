// Leases and pins a model through the public headers under the mcache/ prefix.
#include <mcache/runtime/runtime.hpp>

#include <cstdio>

int main() {
  mcache::runtime_options o;
  o.ram_budget_bytes = 16 << 20;
  o.devices = {{mcache::device_kind::simulated, 8 << 20, 0, 0}};
  mcache::runtime rt{o};
  rt.models().add(mcache::synthetic_model("m", {1 << 16}));
  auto s = rt.open_session("consumer");
  auto lease = s.acquire("m");
  auto pin = s.pin(lease, 0);
  bool same = pin.tensor("t0").equal(lease.host().find("t0"));
  std::printf("consumer: %s\n", same ? "ok" : "wrong bytes");
  return same ? 0 : 1;
}
