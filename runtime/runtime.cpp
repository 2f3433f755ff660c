#include "runtime/runtime.hpp"

#include <nlohmann/json.hpp>

#include "actors/device_actor.hpp"
#include "actors/ram_cache_actor.hpp"
#include "messages/errors.hpp"
#include "messages/waits.hpp"
#include "runtime/core/format.hpp"
#include "runtime/core/transfer/torch_backend.hpp"
#include "runtime/metrics.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

namespace mcache {

bytes_t available_ram_bytes() {
  std::ifstream meminfo{"/proc/meminfo"};
  std::string key;
  bytes_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:")
      return kib * 1024;
  return 0;
}

namespace {

/// The LibTorch device of a real (non-simulated) device of these options.
c10::Device torch_device_of(const device_options& d) {
  return c10::Device(d.kind == device_kind::cuda ? c10::DeviceType::CUDA : c10::DeviceType::PrivateUse1,
                     static_cast<c10::DeviceIndex>(d.index));
}

[[noreturn]] void bad_option(const std::string& what) {
  throw request_error(failure{errc::invalid_argument, what});
}

/// More threads than this are a typo, not a machine: each one is a real thread started at once.
constexpr std::size_t max_threads = 1024;

// Resolves derived values (RAM budget, thread counts) and rejects unusable options with the numbers.
runtime_options resolve(runtime_options o) {
  auto available = available_ram_bytes();
  if (o.ram_budget_bytes == 0) {
    if (!(o.ram_fraction > 0 && o.ram_fraction <= 1))
      bad_option("ram_fraction must be in (0, 1], got " + std::to_string(o.ram_fraction));
    if (available == 0)
      bad_option("ram_budget (ram_budget_bytes) is 0 and available RAM is unknown; set it");
    o.ram_budget_bytes = static_cast<bytes_t>(static_cast<double>(available) * o.ram_fraction);
  }
  if (available != 0 && o.ram_budget_bytes > 4 * available)
    bad_option("ram_budget (ram_budget_bytes) " + format_bytes(o.ram_budget_bytes) + " is more than 4x the available RAM "
               + format_bytes(available) + "; that budget could never be honoured");
  if (available != 0 && o.ram_budget_bytes > available)
    spdlog::warn("mcache: the RAM budget {} is more than the available RAM {}: filling it would push this machine "
                 "into swap or the OOM killer", format_bytes(o.ram_budget_bytes), format_bytes(available));
  if (o.loader_threads == 0 || o.loader_threads > max_threads)
    bad_option("loader_threads is " + std::to_string(o.loader_threads) + "; it must be 1 to " + std::to_string(max_threads));
  if (o.scheduler_threads > max_threads)
    bad_option("scheduler_threads is " + std::to_string(o.scheduler_threads) + "; it must be 0 (one per core) to "
               + std::to_string(max_threads));
  if (o.keep_alive < std::chrono::nanoseconds::zero())
    bad_option("keep_alive must not be negative (0 keeps models until room is needed)");
  if (o.pinned_budget_bytes > o.ram_budget_bytes)
    bad_option("pinned_budget (pinned_budget_bytes) " + format_bytes(o.pinned_budget_bytes) + " is larger than the RAM budget "
               + format_bytes(o.ram_budget_bytes) + ": pinned buffers hold host copies inside the RAM budget");
  // A null factory means the default, for both policies (a null eviction policy used to crash the actors).
  if (!o.eviction)
    o.eviction = make_lru_policy;
  if (!o.placement)
    o.placement = make_resident_then_free_placement;
  if (o.default_wait < std::chrono::nanoseconds::zero())
    bad_option("default_wait must not be negative");
  std::map<std::string, size_t> tier_of;  // a real device's name -> the tier that owns it
  for (size_t i = 0; i < o.devices.size(); ++i) {
    auto& d = o.devices[i];
    auto name = "device " + std::to_string(i);
    if (d.kind != device_kind::simulated) {
      if (d.index < 0)
        d.index = static_cast<int>(i);
      if (d.index > std::numeric_limits<c10::DeviceIndex>::max())
        bad_option(name + ": index " + std::to_string(d.index) + " is past any device LibTorch can name (at most "
                   + std::to_string(std::numeric_limits<c10::DeviceIndex>::max()) + ")");
      auto torch = torch_device_of(d);
      auto owner = tier_of.emplace(torch.str(), i);
      if (!owner.second)
        bad_option(name + ": " + torch.str() + " is device " + std::to_string(owner.first->second)
                   + " already; two tiers on one device would each count its memory as their own");
      auto count = torch_device_count(torch.type());
      if (d.index >= count)
        bad_option(name + ": " + torch.str() + " asked for, but LibTorch sees "
                   + std::to_string(count) + " such device(s)"
                   + (count == 0 && d.kind == device_kind::cuda ? ": this LibTorch was built without CUDA" : "")
                   + (count == 0 && d.kind == device_kind::accelerator ? ": no PrivateUse1 backend is registered" : ""));
      if (d.budget_bytes == 0) {
        auto free = d.kind == device_kind::cuda ? cuda_free_memory(d.index) : std::nullopt;
        if (!free)
          bad_option(name + ": vram_budget (budget_bytes) is 0 and the device's free memory cannot be read"
                     + std::string{d.kind == device_kind::cuda ? " (NVML is not available)" : ""} + "; set it");
        d.budget_bytes = *free;
      }
    }
    device_tier_options t{static_cast<device_index>(i), o.devices[i].budget_bytes, o.devices[i].reserve_bytes,
                          o.devices[i].partial_loading, o.devices[i].staging_slots, o.keep_alive, {}};
    if (auto err = device_tier::validate(t))
      bad_option(err->detail);
    if (!(o.devices[i].simulated_bandwidth_bytes_per_s >= 0))  // also NaN
      bad_option("device " + std::to_string(i) + ": simulated bandwidth must be a number of bytes per second, 0 or more (0: "
                 "unlimited), not " + std::to_string(o.devices[i].simulated_bandwidth_bytes_per_s));
  }
  if (o.cpu_working_budget_bytes == 0)
    o.cpu_working_budget_bytes = o.ram_budget_bytes;
  // The CPU pins' tier is a device tier too: its budget is checked as the devices' are (an implausible
  // one used to end its actor at start, and every CPU pin then failed as if the runtime were stopping).
  if (auto err = device_tier::validate({cpu_device, o.cpu_working_budget_bytes, 0, false, 2, o.keep_alive, {}}))
    bad_option("cpu_working_budget (cpu_working_budget_bytes): " + err->detail);
  if (o.scheduler_threads == 0)
    o.scheduler_threads = std::max(2u, std::thread::hardware_concurrency());
  return o;
}

} // namespace

void configure(caf::actor_system_config& cfg, const runtime_options& options) {
  register_types(cfg);
  cfg.set("scheduler.policy",
          options.scheduler == scheduler_policy::sharing ? caf::atom("sharing") : caf::atom("stealing"));
  cfg.set("scheduler.max-threads", options.scheduler_threads);
  cfg.set("logger.verbosity", caf::atom("quiet"));
}

std::vector<device_options> all_gpus(device_options each) {
  std::vector<device_options> out;
  auto count = torch_device_count(c10::DeviceType::CUDA);
  if (count == 0)
    spdlog::info("mcache: no GPU: LibTorch sees no CUDA device (a LibTorch built without CUDA, or no driver); "
                 "all_gpus() returns none");
  for (int i = 0; i < count; ++i) {
    auto d = each;
    d.kind = device_kind::cuda;
    d.index = i;
    out.push_back(d);
  }
  return out;
}

runtime::runtime(runtime_options options) : options_(resolve(std::move(options))) {
  // Spawning leaves the system's logger in this thread's storage (Note [CAF's thread-local logger]); the
  // runtime may be destroyed on another thread while this one lives on.
  detail::release_thread_logger release_logger;
  catalog_ = std::make_shared<catalog>();
  if (!options_.trace_path.empty())
    trace_ = std::make_shared<timeline>();
  placement_ = options_.placement();
  loaders_ = make_thread_pool_executor(options_.loader_threads);
  config_ = std::make_unique<caf::actor_system_config>();
  configure(*config_, options_);
  system_ = std::make_unique<caf::actor_system>(*config_);
  ram_cache_config rc;
  rc.tier.budget_bytes = options_.ram_budget_bytes;
  rc.tier.keep_ram_copy = options_.keep_ram_copy;
  rc.tier.keep_alive = options_.keep_alive;
  rc.models = catalog_;
  rc.loaders = loaders_;
  // Note [Reuse, do not re-fault]: buffers in use plus those kept for reuse stay within each budget.
  rc.memory = std::make_shared<host_memory>(options_.pinned_budget_bytes, options_.ram_budget_bytes);
  rc.policy = options_.eviction;
  rc.check_invariants_each_step = options_.check_invariants;
  rc.trace = trace_;
  auto host_buffers = rc.memory;
  ram_ = spawn_ram_cache(*system_, std::move(rc));
  auto make_device = [&](device_tier_options tier, std::shared_ptr<device_backend> backend) {
    device_actor_config dc;
    // The CPU pin tier aliases the RAM copy: it never holds a copy of its own to hand back.
    dc.report_whole_copies = !options_.keep_ram_copy && tier.device != cpu_device;
    dc.memory = host_buffers;
    dc.trace = trace_;
    dc.tier = tier;
    dc.models = catalog_;
    dc.backend = std::move(backend);
    // Each device has its own copy queue: one device's copies never wait behind another's. It is serial,
    // as a device's copy engine is, so frees posted before a copy really happen before it.
    copiers_.push_back(make_thread_pool_executor(1));
    dc.copiers = copiers_.back();
    dc.ram = ram_;
    dc.policy = options_.eviction;
    dc.check_invariants_each_step = options_.check_invariants;
    return spawn_device(*system_, std::move(dc));
  };
  std::string devices;
  for (size_t i = 0; i < options_.devices.size(); ++i) {
    const auto& d = options_.devices[i];
    auto index = static_cast<device_index>(i);
    std::shared_ptr<device_backend> backend;
    if (d.kind == device_kind::simulated)
      backend = make_simulated_backend(index, {d.simulated_bandwidth_bytes_per_s, d.budget_bytes, {}});
    else
      backend = make_torch_backend(torch_device_of(d));
    devices += "; device " + std::to_string(i) + " (" + backend->describe() + "): " + format_bytes(d.budget_bytes)
               + ", reserve " + format_bytes(d.reserve_bytes);
    backends_.push_back(backend);
    devices_.push_back(make_device({index, d.budget_bytes, d.reserve_bytes, d.partial_loading, d.staging_slots,
                                    options_.keep_alive, {}},
                                   std::move(backend)));
  }
  spdlog::info("mcache: RAM budget {}{}; {} loader threads, {} copy queue per device, {} scheduler threads",
               format_bytes(options_.ram_budget_bytes), devices, options_.loader_threads, 1,
               options_.scheduler_threads);
  cpu_ = make_device({cpu_device, options_.cpu_working_budget_bytes, 0, false, 2, options_.keep_alive, {}},
                     make_host_backend());
  // Devices hold RAM leases for their pins: the status page names them.
  for (std::size_t i = 0; i < devices_.size(); ++i)
    name_holder(devices_[i]->id(), "device " + std::to_string(i));
  name_holder(cpu_->id(), "CPU pins");
}

bool runtime::shutdown(std::chrono::nanoseconds grace) {
  // A second caller waits for the first to finish, then gets its answer.
  std::lock_guard<std::mutex> guard{shutdown_mutex_};
  if (stopped_.exchange(true))
    return shutdown_clean_;
  // One deadline for the whole shutdown: each step gets what is left of the grace.
  if (waits_forever(grace))  // now + grace would overflow near max()
    grace = for_ever;
  auto deadline = std::chrono::steady_clock::now() + grace;
  auto left = [&] {
    return std::max(std::chrono::nanoseconds{1}, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                    deadline - std::chrono::steady_clock::now()));
  };
  // 1. Every actor answers what it holds with shutting_down and refuses new work (CAF 0.17 drops a
  //    promise silently when its actor exits, so waiters must be answered before the actors go).
  //    Devices first: their pending borrows are answered before the RAM-cache actor stops lending.
  {
    detail::release_thread_logger release_logger;
    caf::scoped_actor self{*system_};
    auto stop = [&](const auto& actor) {
      self->request(actor, caf::timespan{left()}, shutdown_atom::value).receive([] {}, [](caf::error&) {});
    };
    for (auto& d : devices_)
      stop(d);
    stop(cpu_);
    stop(ram_);
  }
  // 2. Loads and copies not started are dropped; running ones get `grace` to return.
  shutdown_clean_ = loaders_->stop(left());
  for (auto& c : copiers_)
    shutdown_clean_ &= c->stop(left());
  if (!shutdown_clean_)
    spdlog::warn("mcache: a load or copy did not return within the shutdown grace; it was abandoned");
  // 3. Note [Timeline]: everything recorded so far goes to the file.
  if (trace_) {
    try {
      trace_->write(options_.trace_path);
      spdlog::info("mcache: wrote the timeline ({} events) to {}", trace_->events(), options_.trace_path);
    } catch (const std::exception& e) {
      spdlog::warn("mcache: {}", e.what());
    }
  }
  return shutdown_clean_;
}

runtime::~runtime() {
  shutdown();
  // The actor system's destructor waits for every actor it owns: stop them first.
  for (auto& d : devices_)
    caf::anon_send_exit(d, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(cpu_, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(ram_, caf::exit_reason::user_shutdown);
  devices_.clear();
  cpu_ = nullptr;
  ram_ = nullptr;
  caf::logger::set_current_actor_system(nullptr);
  system_.reset();
}

namespace {
[[noreturn]] void no_such_device(device_index index, std::size_t devices) {
  throw request_error(failure{errc::invalid_device, "device " + std::to_string(index) + " does not exist; this runtime has "
                                                      + std::to_string(devices) + " device(s) and cpu_device (-1)"});
}
} // namespace

device_actor runtime::device(device_index index) const {
  if (index == cpu_device)
    return cpu_;
  if (index < 0 || static_cast<size_t>(index) >= devices_.size())
    no_such_device(index, devices_.size());
  return devices_[static_cast<size_t>(index)];
}

bytes_t runtime::device_footprint(device_index index, bytes_t tensor_bytes) const {
  if (index == cpu_device)
    return 0;
  if (index < 0 || static_cast<size_t>(index) >= backends_.size())
    no_such_device(index, backends_.size());
  return backends_[static_cast<size_t>(index)]->footprint(tensor_bytes);
}

c10::Device runtime::torch_device(device_index index) const {
  if (index == cpu_device)
    return c10::Device(c10::DeviceType::CPU);
  if (index < 0 || static_cast<size_t>(index) >= backends_.size())
    no_such_device(index, backends_.size());
  return backends_[static_cast<size_t>(index)]->torch_device();
}

session runtime::open_session(std::string name) {
  session s{*this};
  if (name.empty())
    name = "session " + std::to_string(++sessions_opened_);
  name_holder(s.self()->id(), std::move(name));
  return s;
}

void runtime::name_holder(std::uint64_t actor_id, std::string name) {
  std::lock_guard<std::mutex> guard{names_mutex_};
  holder_names_[actor_id] = std::move(name);
}

std::string runtime::holder_name(std::uint64_t actor_id) const {
  std::lock_guard<std::mutex> guard{names_mutex_};
  auto i = holder_names_.find(actor_id);
  return i == holder_names_.end() ? "actor " + std::to_string(actor_id) : i->second;
}

runtime::tier_reports runtime::reports(caf::scoped_actor& self) {
  tier_reports out;
  auto fail = [](caf::error& e) { throw request_error(to_failure(e)); };
  self->request(ram_, caf::infinite, status_atom::value).receive([&](tier_report& r) { out.ram = std::move(r); }, fail);
  for (auto& d : devices_)
    self->request(d, caf::infinite, status_atom::value)
      .receive([&](tier_report& r) { out.devices.push_back(std::move(r)); }, fail);
  self->request(cpu_, caf::infinite, status_atom::value).receive([&](tier_report& r) { out.cpu = std::move(r); }, fail);
  return out;
}

void runtime::retire(const outcome<model_id>& retired) {
  if (!succeeded(retired))
    throw request_error(std::get<failure>(retired));
  const auto& model = std::get<model_id>(retired);
  // The catalog already answers new acquires; the tiers drop the old generation once nothing holds it.
  caf::anon_send(ram_, retire_atom::value, model);
  for (auto& d : devices_)
    caf::anon_send(d, retire_atom::value, model);
  caf::anon_send(cpu_, retire_atom::value, model);
}

void runtime::remove_model(const model_id& id) { retire(catalog_->remove(id)); }

void runtime::replace_model(model_descriptor descriptor) { retire(catalog_->replace(std::move(descriptor))); }

empty_cache_report runtime::empty_cache() {
  empty_cache_report out;
  detail::release_thread_logger release_logger;
  caf::scoped_actor self{*system_};
  auto fail = [](caf::error& e) { throw request_error(to_failure(e)); };
  for (auto& d : devices_)
    self->request(d, caf::infinite, offload_atom::value, model_id{}, bytes_t{0})
      .receive([&](bytes_t freed) { out.device_freed_bytes.push_back(freed); }, fail);
  self->request(ram_, caf::infinite, trim_atom::value, model_id{}, bytes_t{0})
    .receive([&](bytes_t freed) { out.ram_freed_bytes = freed; }, fail);
  auto explain = [&](const std::string& tier, const tier_report& r, const char* held_as) {
    for (const auto& m : r.models) {
      auto line = tier + ": '" + m.model + "' (" + format_bytes(m.bytes) + ") ";
      if (m.holders.empty()) {
        line += "is still " + m.state + " (it arrived or was asked for meanwhile)";
      } else {
        line += "is " + std::string{held_as} + " by ";
        for (std::size_t k = 0; k < m.holders.size(); ++k)
          line += (k ? ", '" : "'") + holder_name(m.holders[k].holder) + "' for "
                  + format_seconds(static_cast<double>(m.holders[k].held_ns) / 1e9);
      }
      out.kept.push_back(std::move(line));
    }
  };
  auto kept = reports(self);
  for (std::size_t i = 0; i < kept.devices.size(); ++i)
    explain("device " + std::to_string(i), kept.devices[i], "pinned");
  explain("RAM", kept.ram, "leased");
  return out;
}

// The levels (used, held, working, loading bytes and the waiting count) come from each tier's report, taken
// in one step of its actor with its models, so that they add up on every poll; "metrics" holds every
// counter and level of its stats (as /metrics names them), asked for just after.
std::string runtime::status_json() {
  auto models = [&](const tier_report& r) {
    auto all = nlohmann::json::array();
    for (const auto& m : r.models) {
      auto holders = nlohmann::json::array();
      for (const auto& h : m.holders)
        holders.push_back({{"holder", holder_name(h.holder)}, {"held_s", static_cast<double>(h.held_ns) / 1e9}});
      all.push_back({{"model", m.model}, {"state", m.state}, {"bytes", m.bytes}, {"model_bytes", m.model_bytes},
                     {"holders", std::move(holders)}});
    }
    return all;
  };
  auto bytes_where = [](const tier_report& r, auto pred) {
    bytes_t sum = 0;
    for (const auto& m : r.models)
      if (pred(m))
        sum += m.bytes;
    return sum;
  };
  auto held = [](const model_report& m) { return !m.holders.empty(); };
  auto metrics = [](const auto& stats) {
    nlohmann::json all = nlohmann::json::object();
    for (const auto& kv : metric_values(stats))
      all[kv.first] = kv.second;
    return all;
  };
  auto device = [&](const device_stats& s, const tier_report& r, const std::string& name) {
    return nlohmann::json{{"name", name}, {"device", s.device}, {"torch_device", torch_device(s.device).str()},
                          {"budget_bytes", s.budget_bytes},
                          {"reserve_bytes", s.reserve_bytes}, {"used_bytes", r.used_bytes},
                          {"pinned_bytes", bytes_where(r, held)}, {"working_bytes", r.working_bytes},
                          {"waiting", r.waiting}, {"hits", s.hits}, {"loads", s.loads},
                          {"evictions", s.evictions}, {"models", models(r)}, {"metrics", metrics(s)}};
  };
  detail::release_thread_logger release_logger;
  caf::scoped_actor self{*system_};  // one for both snapshots: a poll pays for one, not two
  auto holdings = reports(self);
  auto st = stats(self);
  nlohmann::json doc;
  doc["ram"] = {{"name", "RAM"}, {"budget_bytes", st.ram.budget_bytes}, {"used_bytes", holdings.ram.used_bytes},
                {"leased_bytes", bytes_where(holdings.ram, held)},
                {"loading_bytes", bytes_where(holdings.ram, [](const model_report& m) { return m.state == "loading"; })},
                {"waiting", holdings.ram.waiting}, {"hits", st.ram.hits}, {"loads", st.ram.loads},
                {"evictions", st.ram.evictions}, {"models", models(holdings.ram)}, {"metrics", metrics(st.ram)}};
  doc["devices"] = nlohmann::json::array();
  for (std::size_t i = 0; i < st.devices.size(); ++i)
    doc["devices"].push_back(device(st.devices[i], holdings.devices[i], "device " + std::to_string(i)));
  doc["cpu"] = device(st.cpu, holdings.cpu, "CPU pins");
  doc["catalog_models"] = catalog_->size();
  // Names the catalog did not check (a session's) may hold bytes that are not UTF-8: replaced, so that
  // one of them cannot make every /status fail.
  return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

runtime_stats runtime::stats() {
  detail::release_thread_logger release_logger;
  caf::scoped_actor self{*system_};
  return stats(self);
}

runtime::tier_reports runtime::holdings() {
  detail::release_thread_logger release_logger;
  caf::scoped_actor self{*system_};
  return reports(self);
}

runtime_stats runtime::stats(caf::scoped_actor& self) {
  runtime_stats out;
  auto fail = [](caf::error& e) { throw request_error(to_failure(e)); };
  self->request(ram_, caf::infinite, stats_atom::value).receive([&](ram_stats& s) { out.ram = s; }, fail);
  for (auto& d : devices_)
    self->request(d, caf::infinite, stats_atom::value)
      .receive([&](device_stats& s) { out.devices.push_back(s); }, fail);
  self->request(cpu_, caf::infinite, stats_atom::value).receive([&](device_stats& s) { out.cpu = s; }, fail);
  return out;
}

} // namespace mcache
