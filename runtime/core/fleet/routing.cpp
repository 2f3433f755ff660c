#include "runtime/core/fleet/routing.hpp"

#include "runtime/core/format.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <stdexcept>

namespace mcache::fleet {

const char* to_string(routing_policy policy) {
  return policy == routing_policy::residency ? "residency" : "round_robin";
}

bool node_view::serves(const std::string& pipeline) const {
  return std::find(summary.pipelines.begin(), summary.pipelines.end(), pipeline) != summary.pipelines.end();
}

std::optional<failure> unplaceable(const std::vector<node_view>& nodes, const std::string& pipeline,
                                   bool waited_out, std::chrono::milliseconds waited) {
  std::set<std::string> served;
  std::size_t unknown = 0;  // nodes down, or up without a summary yet
  for (const auto& n : nodes) {
    if (!n.up || !n.has_summary) {
      ++unknown;
      continue;
    }
    if (n.serves(pipeline))
      return std::nullopt;  // placeable once that node may take it (not the question here)
    served.insert(n.summary.pipelines.begin(), n.summary.pipelines.end());
  }
  if (unknown > 0 && !waited_out)
    return std::nullopt;
  std::string names;
  for (const auto& p : served)
    append_quoted(names, p);
  auto what = "serve" + std::string{names.empty() ? " nothing yet" : " " + names};
  if (unknown == 0)
    return failure{errc::unknown_pipeline, "no node serves pipeline '" + pipeline + "'; the " + std::to_string(nodes.size())
                                             + " node(s) " + what};
  return failure{errc::node_unavailable, "no node that serves pipeline '" + pipeline + "' was up within "
                                           + std::to_string(waited.count()) + " ms; " + std::to_string(unknown)
                                           + " of " + std::to_string(nodes.size()) + " node(s) did not answer, the others "
                                           + what};
}

void node_view::summarized() {
  auto ended = summary.jobs_served + summary.jobs_failed;
  for (auto i = just_used.begin(); i != just_used.end();)
    i = i->second <= ended ? just_used.erase(i) : std::next(i);
}

router_policy::router_policy(routing_policy policy, std::size_t balance_bound)
  : policy_(policy), balance_bound_(std::max<std::size_t>(balance_bound, 1)) {}

std::map<model_id, bytes_t> router_policy::known_sizes(const std::vector<node_view>& nodes) {
  std::map<model_id, bytes_t> sizes;
  for (const auto& n : nodes)
    for (const auto& r : n.summary.resident)
      sizes[r.model] = std::max(sizes[r.model], r.model_bytes);
  return sizes;
}

bytes_t router_policy::bytes_to_move(const node_view& node, const std::vector<model_id>& models,
                                     const std::map<model_id, bytes_t>& sizes) {
  bytes_t total = 0;
  for (const auto& m : models) {
    if (node.arriving.count(m) > 0 || node.just_used.count(m) > 0)
      continue;  // arriving or just used there: it will be there
    auto known = sizes.find(m);
    if (known == sizes.end()) {
      total += 1;  // no summary names it yet: the same everywhere, except where it is arriving
      continue;
    }
    bytes_t in_ram = 0, on_best_device = 0;
    for (const auto& r : node.summary.resident) {
      if (r.model != m)
        continue;
      if (r.tier == ram_tier)
        in_ram = std::max(in_ram, r.bytes);
      else
        on_best_device = std::max(on_best_device, r.bytes);
    }
    auto whole = known->second;
    total += (whole - std::min(whole, in_ram)) + (whole - std::min(whole, on_best_device));
  }
  return total;
}

std::optional<route_choice> router_policy::choose(const std::vector<node_view>& nodes, const std::string& pipeline,
                                                  const std::vector<model_id>& models,
                                                  std::optional<std::size_t> excluded) {
  std::vector<std::size_t> eligible;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].up && nodes[i].has_summary && nodes[i].serves(pipeline))
      eligible.push_back(i);
  if (excluded)
    eligible.erase(std::remove(eligible.begin(), eligible.end(), *excluded), eligible.end());
  if (eligible.empty())
    return std::nullopt;
  // Visit in round-robin order from the cursor, so that the first of equals is the next in turn.
  std::rotate(eligible.begin(),
              std::find_if(eligible.begin(), eligible.end(), [&](std::size_t i) { return i >= cursor_ % nodes.size(); }),
              eligible.end());
  if (policy_ == routing_policy::round_robin) {
    cursor_ = eligible.front() + 1;
    return route_choice{eligible.front(), 0};
  }
  std::size_t shortest = std::numeric_limits<std::size_t>::max();
  for (auto i : eligible)
    shortest = std::min(shortest, nodes[i].queue());
  auto sizes = known_sizes(nodes);
  std::optional<route_choice> best;
  std::size_t best_queue = 0;
  for (auto i : eligible) {
    auto q = nodes[i].queue();
    if (q >= shortest + balance_bound_)
      continue;  // Note [Routing]: too far behind the least loaded node
    auto cost = bytes_to_move(nodes[i], models, sizes);
    if (!best || cost < best->bytes_to_move || (cost == best->bytes_to_move && q < best_queue)) {
      best = route_choice{i, cost};
      best_queue = q;
    }
  }
  cursor_ = best->node + 1;
  return best;
}

bool dispatch_book::accept(job_request request) {
  auto key = request.key;
  return jobs_.emplace(std::move(key), entry{std::move(request), no_node, 0}).second;
}

std::uint32_t dispatch_book::assign(const std::string& key, std::size_t node) {
  auto& e = jobs_.at(key);
  e.node = node;
  return ++e.attempt;
}

dispatch_book::after_loss dispatch_book::attempt_lost(const std::string& key, std::uint32_t attempt) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || it->second.attempt != attempt || it->second.node == no_node)
    return after_loss::stale;
  it->second.node = no_node;
  return it->second.attempt < 2 ? after_loss::resend : after_loss::fail;
}

dispatch_book::lost dispatch_book::node_lost(std::size_t node) {
  lost out;
  for (auto& [key, e] : jobs_) {
    if (e.node != node)
      continue;
    e.node = no_node;
    (e.attempt < 2 ? out.resend : out.fail).push_back(key);
  }
  return out;
}

bool dispatch_book::answered(const std::string& key, std::uint32_t attempt) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || it->second.attempt != attempt || it->second.node == no_node)
    return false;
  jobs_.erase(it);
  return true;
}

void dispatch_book::drop(const std::string& key) { jobs_.erase(key); }

const dispatch_book::entry* dispatch_book::find(const std::string& key) const {
  auto it = jobs_.find(key);
  return it == jobs_.end() ? nullptr : &it->second;
}

void dispatch_book::annotate(std::vector<node_view>& nodes) const {
  for (auto& n : nodes) {
    n.in_flight = 0;
    n.arriving.clear();
  }
  for (const auto& [key, e] : jobs_) {
    if (e.node == no_node || e.node >= nodes.size())
      continue;
    ++nodes[e.node].in_flight;
    nodes[e.node].arriving.insert(e.request.models.begin(), e.request.models.end());
  }
}

std::vector<std::string> dispatch_book::unplaced() const {
  std::vector<std::string> out;
  for (const auto& [key, e] : jobs_)
    if (e.node == no_node)
      out.push_back(key);
  return out;
}

void dispatch_book::check() const {
  for (const auto& [key, e] : jobs_) {
    if (key != e.request.key)
      throw std::logic_error("dispatch_book: job '" + key + "' is filed under another key");
    if (e.attempt > 2)
      throw std::logic_error("dispatch_book: job '" + key + "' was sent more than twice");
    if (e.attempt == 0 && e.node != no_node)
      throw std::logic_error("dispatch_book: job '" + key + "' has a node but was never sent");
  }
}

std::string request_digest(const job_request& r) {
  std::uint64_t h = 14695981039346656037ull;
  auto mix = [&h](const std::string& text) {
    auto size = std::to_string(text.size()) + ":";  // length first: ("ab","c") and ("a","bc") differ
    for (unsigned char c : size + text) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(r.pipeline);
  for (const auto& m : r.models)
    mix(m);
  mix("|");
  for (const auto& [k, v] : r.params) {
    mix(k);
    mix(v);
  }
  mix(std::to_string(r.priority) + "/" + std::to_string(r.deadline_ms));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

bool is_job_key_text(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

std::optional<failure> check_request(const job_request& r, const request_limits& limits) {
  auto refuse = [](std::string what) { return failure{errc::invalid_argument, std::move(what)}; };
  if (r.key.empty() || r.key.size() > limits.max_key)
    return refuse("a job key must have 1 to " + std::to_string(limits.max_key) + " characters; this one has "
                  + std::to_string(r.key.size()));
  if (!is_job_key_text(r.key))
    return refuse("a job key is printable ASCII without spaces (it is one field of a journal line); this one "
                  "has a space, a control character or a byte past ASCII");
  if (r.pipeline.empty() || r.pipeline.size() > limits.max_name)
    return refuse("job '" + r.key + "': a pipeline name must have 1 to " + std::to_string(limits.max_name) + " characters");
  if (r.models.size() > limits.max_models)
    return refuse("job '" + r.key + "' names " + std::to_string(r.models.size()) + " models; at most "
                  + std::to_string(limits.max_models) + " are accepted");
  for (const auto& m : r.models)
    if (m.empty() || m.size() > limits.max_name)
      return refuse("job '" + r.key + "': a model id must have 1 to " + std::to_string(limits.max_name) + " characters");
  if (r.params.size() > limits.max_params)
    return refuse("job '" + r.key + "' has " + std::to_string(r.params.size()) + " parameters; at most "
                  + std::to_string(limits.max_params) + " are accepted");
  std::size_t bytes = 0;
  for (const auto& [k, v] : r.params)
    bytes += k.size() + v.size();
  if (bytes > limits.max_param_bytes)
    return refuse("job '" + r.key + "' has " + std::to_string(bytes) + " bytes of parameters; at most "
                  + std::to_string(limits.max_param_bytes) + " are accepted (weights never travel: name a model)");
  if (r.deadline_ms > limits.max_deadline_ms)
    return refuse("job '" + r.key + "' asks for a deadline of " + std::to_string(r.deadline_ms) + " ms; at most "
                  + std::to_string(limits.max_deadline_ms) + " ms are accepted");
  return std::nullopt;
}

} // namespace mcache::fleet
