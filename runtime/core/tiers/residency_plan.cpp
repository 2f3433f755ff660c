#include "runtime/core/tiers/residency_plan.hpp"

#include <algorithm>

namespace mcache {

std::vector<tensor_slot> absent_tensors(const std::vector<bytes_t>& bytes, const std::vector<bool>& required) {
  std::vector<tensor_slot> out;
  for (size_t k = 0; k < bytes.size(); ++k)
    out.push_back({bytes[k], k < required.size() && required[k], tensor_residency::absent});
  return out;
}

bytes_t staging_for(const std::vector<tensor_slot>& tensors, const std::vector<size_t>& also_resident, size_t slots) {
  bytes_t largest = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (t.state != tensor_residency::absent || t.required
        || std::find(also_resident.begin(), also_resident.end(), i) != also_resident.end())
      continue;
    largest = std::max(largest, t.bytes);
  }
  return largest * slots;
}

bytes_t least_pin_bytes(const std::vector<tensor_slot>& tensors, bool partial_loading, size_t slots) {
  bytes_t whole = 0;
  bytes_t required = 0;
  bytes_t largest_other = 0;  // staging_for's ring
  for (const auto& t : tensors) {
    if (t.state != tensor_residency::absent)
      continue;  // here already, or arriving
    whole += t.bytes;
    if (t.required)
      required += t.bytes;
    else
      largest_other = std::max(largest_other, t.bytes);
  }
  if (!partial_loading)
    return whole;
  return std::min(whole, required + largest_other * slots);
}

std::optional<residency_plan> plan_residency(const std::vector<tensor_slot>& tensors, bytes_t working, bytes_t room,
                                             bool partial_loading, size_t slots) {
  residency_plan whole;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].state == tensor_residency::absent) {
      whole.copy.push_back(i);
      whole.copy_bytes += tensors[i].bytes;
    }
  if (whole.copy_bytes + working <= room)
    return whole;
  if (!partial_loading)
    return std::nullopt;
  // Required tensors first, then others in execution order while they fit beside the staging buffers.
  residency_plan p;
  bytes_t worst_staging = staging_for(tensors, {}, slots);
  for (auto i : whole.copy)
    if (tensors[i].required) {
      p.copy.push_back(i);
      p.copy_bytes += tensors[i].bytes;
    }
  if (p.copy_bytes + worst_staging + working > room)
    return std::nullopt;
  auto budget = room - working - worst_staging - p.copy_bytes;
  for (auto i : whole.copy) {
    if (tensors[i].required || tensors[i].bytes > budget)
      continue;
    p.copy.push_back(i);
    p.copy_bytes += tensors[i].bytes;
    budget -= tensors[i].bytes;
  }
  std::sort(p.copy.begin(), p.copy.end());
  p.staging_bytes = staging_for(tensors, p.copy, slots);
  return p;
}

std::optional<own_trim> plan_own_trim(const std::vector<tensor_slot>& tensors, bytes_t working, bytes_t room,
                                      size_t slots) {
  own_trim t;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].required && tensors[i].state == tensor_residency::absent) {
      t.plan.copy.push_back(i);
      t.plan.copy_bytes += tensors[i].bytes;
    }
  // staging_for's ring, kept up to date as tensors are dropped (each drop only adds a streamed tensor).
  bytes_t largest_streamed = staging_for(tensors, {}, 1);
  for (size_t k = tensors.size(); k-- > 0;) {
    const auto& slot = tensors[k];
    if (slot.state != tensor_residency::resident || slot.required)
      continue;
    t.drop.push_back(k);
    t.freed += slot.bytes;
    largest_streamed = std::max(largest_streamed, slot.bytes);
    if (working + t.plan.copy_bytes + largest_streamed * slots <= room + t.freed) {
      t.plan.staging_bytes = largest_streamed * slots;
      return t;
    }
  }
  return std::nullopt;
}

} // namespace mcache
