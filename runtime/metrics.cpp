#include "runtime/metrics.hpp"

#include <sstream>

namespace mcache {

namespace {

template <class Stats>
struct metric {
  const char* name;
  const char* type;  // "gauge" or "counter"
  const char* help;
  uint64_t (*value)(const Stats&);
};

#define MCACHE_FIELD(S, field) [](const S& s) { return static_cast<uint64_t>(s.field); }

const metric<ram_stats> ram_metrics[] = {
  {"budget_bytes", "gauge", "RAM budget for model host copies.", MCACHE_FIELD(ram_stats, budget_bytes)},
  {"used_bytes", "gauge", "Bytes of resident and loading models.", MCACHE_FIELD(ram_stats, used_bytes)},
  {"peak_used_bytes", "gauge", "Highest used_bytes seen.", MCACHE_FIELD(ram_stats, peak_used_bytes)},
  {"leased_bytes", "gauge", "Bytes of models with at least one lease.", MCACHE_FIELD(ram_stats, leased_bytes)},
  {"loading_bytes", "gauge", "Bytes reserved for loads in flight.", MCACHE_FIELD(ram_stats, loading_bytes)},
  {"models_resident", "gauge", "Models in RAM.", MCACHE_FIELD(ram_stats, models_resident)},
  {"leases_active", "gauge", "Leases held.", MCACHE_FIELD(ram_stats, leases_active)},
  {"waiting_requests", "gauge", "Requests waiting for room.", MCACHE_FIELD(ram_stats, waiting_now)},
  {"hits_total", "counter", "Acquires served without a load.", MCACHE_FIELD(ram_stats, hits)},
  {"loads_total", "counter", "Loads started.", MCACHE_FIELD(ram_stats, loads)},
  {"reloads_total", "counter", "Loads of models evicted before.", MCACHE_FIELD(ram_stats, reloads)},
  {"shared_loads_total", "counter", "Acquires that joined a load in flight.", MCACHE_FIELD(ram_stats, shared_loads)},
  {"load_failures_total", "counter", "Loads that failed.", MCACHE_FIELD(ram_stats, load_failures)},
  {"loads_stopped_total", "counter", "Loads stopped because nobody waited for them any more.", MCACHE_FIELD(ram_stats, loads_stopped)},
  {"loaded_bytes_total", "counter", "Bytes brought into RAM by loads.", MCACHE_FIELD(ram_stats, bytes_loaded)},
  {"load_nanoseconds_total", "counter", "Wall time of loads.", MCACHE_FIELD(ram_stats, load_ns)},
  {"evictions_total", "counter", "Models evicted to make room.", MCACHE_FIELD(ram_stats, evictions)},
  {"retired_drops_total", "counter", "Removed or replaced models dropped once unheld.", MCACHE_FIELD(ram_stats, retired_drops)},
  {"evicted_bytes_total", "counter", "Bytes evicted to make room.", MCACHE_FIELD(ram_stats, evicted_bytes)},
  {"trims_total", "counter", "Models dropped by explicit trims.", MCACHE_FIELD(ram_stats, trims)},
  {"waits_total", "counter", "Requests that waited for room.", MCACHE_FIELD(ram_stats, waits)},
  {"timeouts_total", "counter", "Requests that failed at their deadline.", MCACHE_FIELD(ram_stats, timeouts)},
  {"hand_overs_total", "counter", "RAM evictions that left a model's only copy on a device.", MCACHE_FIELD(ram_stats, hand_overs)},
  {"device_fetches_total", "counter", "Acquires served by copying a model back from a device instead of disk.", MCACHE_FIELD(ram_stats, device_fetches)},
  {"copy_backs_total", "counter", "Device evictions copied back into RAM.", MCACHE_FIELD(ram_stats, copy_backs)},
  {"copy_backs_refused_total", "counter", "Device evictions dropped for lack of free RAM.", MCACHE_FIELD(ram_stats, copy_backs_refused)},
  {"bytes_from_devices_total", "counter", "Bytes brought into RAM from devices.", MCACHE_FIELD(ram_stats, bytes_from_devices)},
  {"skeleton_bytes", "gauge", "Non-tensor payloads of models whose only copy is on a device: beyond the RAM budget.", MCACHE_FIELD(ram_stats, skeleton_bytes)},
  {"pinned_budget_bytes", "gauge", "Budget of pinned host buffers.", MCACHE_FIELD(ram_stats, pinned_budget_bytes)},
  {"pinned_bytes", "gauge", "Pinned host memory held now (slabs load buffers are carved from).", MCACHE_FIELD(ram_stats, pinned_bytes)},
  {"pinned_peak_bytes", "gauge", "Highest pinned_bytes seen.", MCACHE_FIELD(ram_stats, pinned_peak_bytes)},
  {"pageable_fallbacks_total", "counter", "Host buffers that wanted pinning and got pageable memory.", MCACHE_FIELD(ram_stats, pageable_fallbacks)},
  {"pageable_fallback_bytes_total", "counter", "Bytes of those buffers.", MCACHE_FIELD(ram_stats, pageable_fallback_bytes)},
  {"host_cached_bytes", "gauge", "Host slab memory (pinned and pageable) no buffer uses, kept for reuse.", MCACHE_FIELD(ram_stats, host_cached_bytes)},
  {"host_overflow_bytes", "gauge", "Host buffers in use that no slab held: memory beyond the RAM budget.", MCACHE_FIELD(ram_stats, host_overflow_bytes)},
  {"host_overflows_total", "counter", "Host buffers that no slab could hold.", MCACHE_FIELD(ram_stats, host_overflows)},
};

const metric<device_stats> device_metrics[] = {
  {"budget_bytes", "gauge", "Device budget.", MCACHE_FIELD(device_stats, budget_bytes)},
  {"reserve_bytes", "gauge", "Of the budget, kept free for work outside pins.", MCACHE_FIELD(device_stats, reserve_bytes)},
  {"used_bytes", "gauge", "Resident and copying tensors plus working memory.", MCACHE_FIELD(device_stats, used_bytes)},
  {"peak_used_bytes", "gauge", "Highest used_bytes seen.", MCACHE_FIELD(device_stats, peak_used_bytes)},
  {"resident_bytes", "gauge", "Bytes of resident and copying tensors.", MCACHE_FIELD(device_stats, resident_bytes)},
  {"pinned_bytes", "gauge", "Resident bytes of pinned models.", MCACHE_FIELD(device_stats, pinned_bytes)},
  {"working_bytes", "gauge", "Working memory and staging reserved by pins.", MCACHE_FIELD(device_stats, working_bytes)},
  {"models_resident", "gauge", "Models with tensors on the device.", MCACHE_FIELD(device_stats, models_resident)},
  {"pins_active", "gauge", "Pins held.", MCACHE_FIELD(device_stats, pins_active)},
  {"waiting_requests", "gauge", "Pin requests waiting for room.", MCACHE_FIELD(device_stats, waiting_now)},
  {"hits_total", "counter", "Pins served without a copy.", MCACHE_FIELD(device_stats, hits)},
  {"loads_total", "counter", "Copies to the device started.", MCACHE_FIELD(device_stats, loads)},
  {"shared_loads_total", "counter", "Pins that joined a copy in flight.", MCACHE_FIELD(device_stats, shared_loads)},
  {"partial_loads_total", "counter", "Copies that left a model partly resident.", MCACHE_FIELD(device_stats, partial_loads)},
  {"top_ups_total", "counter", "Copies that added tensors to a partly resident model.", MCACHE_FIELD(device_stats, top_ups)},
  {"copy_failures_total", "counter", "Copies that failed.", MCACHE_FIELD(device_stats, copy_failures)},
  {"oom_retries_total", "counter", "Copies retried after a device out-of-memory.", MCACHE_FIELD(device_stats, oom_retries)},
  {"copied_in_bytes_total", "counter", "Host-to-device bytes copied.", MCACHE_FIELD(device_stats, bytes_copied_in)},
  {"copy_nanoseconds_total", "counter", "Wall time of copies.", MCACHE_FIELD(device_stats, copy_ns)},
  {"streamed_bytes_total", "counter", "Bytes streamed through staging buffers.", MCACHE_FIELD(device_stats, streamed_bytes)},
  {"evictions_total", "counter", "Models dropped whole to make room.", MCACHE_FIELD(device_stats, evictions)},
  {"retired_drops_total", "counter", "Removed or replaced models dropped once unpinned.", MCACHE_FIELD(device_stats, retired_drops)},
  {"partial_evictions_total", "counter", "Models evicted in part (tensor by tensor) to make room.", MCACHE_FIELD(device_stats, partial_evictions)},
  {"evicted_bytes_total", "counter", "Bytes freed to make room.", MCACHE_FIELD(device_stats, evicted_bytes)},
  {"offloads_total", "counter", "Models offloaded explicitly.", MCACHE_FIELD(device_stats, offloads)},
  {"offloaded_bytes_total", "counter", "Bytes offloaded explicitly.", MCACHE_FIELD(device_stats, offloaded_bytes)},
  {"waits_total", "counter", "Pin requests that waited for room.", MCACHE_FIELD(device_stats, waits)},
  {"timeouts_total", "counter", "Pin requests that failed at their deadline.", MCACHE_FIELD(device_stats, timeouts)},
  {"allocator_cached_bytes", "gauge", "Freed device memory the backend keeps for reuse, beyond used_bytes.", MCACHE_FIELD(device_stats, allocator_cached_bytes)},
  {"allocator_overflow_bytes", "gauge", "A simulated device's buffers in use that no slab held: beyond its budget.", MCACHE_FIELD(device_stats, allocator_overflow_bytes)},
  {"allocator_overflows_total", "counter", "A simulated device's buffers that no slab could hold.", MCACHE_FIELD(device_stats, allocator_overflows)},
};

#undef MCACHE_FIELD

} // namespace

std::string prometheus_metric(const std::string& name, const char* type, const std::string& help, uint64_t value,
                              const std::vector<std::pair<std::string, std::string>>& labels) {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    out += (i == 0 ? "{" : ",") + labels[i].first + "=\"";
    for (char c : labels[i].second)  // backslash, quote and newline escaped
      out += c == '\\' ? std::string{"\\\\"} : c == '"' ? std::string{"\\\""} : c == '\n' ? std::string{"\\n"} : std::string(1, c);
    out += "\"";
  }
  return out + (labels.empty() ? " " : "} ") + std::to_string(value) + "\n";
}

std::string prometheus_text(const runtime_stats& stats, const std::vector<std::string>& torch_devices) {
  std::ostringstream out;
  if (!torch_devices.empty()) {
    out << "# HELP mcache_device_info Which device each index is, as LibTorch names it (always 1).\n";
    out << "# TYPE mcache_device_info gauge\n";
    for (std::size_t i = 0; i < torch_devices.size(); ++i)
      out << "mcache_device_info{device=\"" << i << "\",torch_device=\"" << torch_devices[i] << "\"} 1\n";
  }
  for (const auto& m : ram_metrics)
    out << prometheus_metric(std::string{"mcache_ram_"} + m.name, m.type, m.help, m.value(stats.ram));
  for (const auto& m : device_metrics) {
    out << "# HELP mcache_device_" << m.name << ' ' << m.help << '\n';
    out << "# TYPE mcache_device_" << m.name << ' ' << m.type << '\n';
    for (const auto& d : stats.devices)
      out << "mcache_device_" << m.name << "{device=\"" << d.device << "\"} " << m.value(d) << '\n';
    out << "mcache_device_" << m.name << "{device=\"cpu\"} " << m.value(stats.cpu) << '\n';
  }
  return out.str();
}

namespace {
template <class Stats, size_t N>
std::vector<std::pair<std::string, uint64_t>> values_of(const metric<Stats> (&table)[N], const Stats& stats) {
  std::vector<std::pair<std::string, uint64_t>> out;
  out.reserve(N);
  for (const auto& m : table)
    out.emplace_back(m.name, m.value(stats));
  return out;
}
} // namespace

std::vector<std::pair<std::string, uint64_t>> metric_values(const ram_stats& stats) {
  return values_of(ram_metrics, stats);
}
std::vector<std::pair<std::string, uint64_t>> metric_values(const device_stats& stats) {
  return values_of(device_metrics, stats);
}

std::string prometheus_text(runtime& rt) {
  std::vector<std::string> names;
  for (std::size_t i = 0; i < rt.device_count(); ++i)
    names.push_back(rt.torch_device(static_cast<device_index>(i)).str());
  return prometheus_text(rt.stats(), names);
}

} // namespace mcache
