#pragma once
// The book of holders, shared by both tiers: who holds which claim (a RAM lease, a device pin) on which
// model. It issues ids, answers "is this yours?" with the same errors in both tiers, and finds everything a
// holder holds when the holder goes away.

#include "messages/errc.hpp"
#include "messages/ids.hpp"
#include "messages/stats.hpp"

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace mcache {

/// `Record` has at least `model_id model` and `holder_id holder`.
template <class Record>
class holder_book {
public:
  /// `noun` names a claim in error texts ("lease", "pin"); the codes are the tier's unknown / foreign ones.
  holder_book(std::string noun, errc never_issued, errc foreign)
    : noun_(std::move(noun)), never_issued_(never_issued), foreign_(foreign) {}

  /// Records a claim and returns its id (ids start at 1 and are never reused).
  uint64_t issue(Record record) {
    auto id = next_++;
    by_holder_[record.holder].insert(id);
    records_.emplace(id, std::move(record));
    issued_at_.emplace(id, std::chrono::steady_clock::now());
    return id;
  }
  /// When claim `id` was issued (for "held by 'worker-3' since 12 s").
  std::chrono::steady_clock::time_point issued_at(uint64_t id) const { return issued_at_.at(id); }
  /// Every claim's holder and age, by model (for operators' reports).
  std::map<model_id, std::vector<holder_report>> holders_by_model() const {
    std::map<model_id, std::vector<holder_report>> out;
    auto now = std::chrono::steady_clock::now();
    for (const auto& kv : records_)
      out[kv.second.model].push_back(
        {kv.second.holder, static_cast<std::uint64_t>(
                             std::chrono::duration_cast<std::chrono::nanoseconds>(now - issued_at_.at(kv.first)).count())});
    return out;
  }

  /// Whether `holder` may end claim `id`: an error naming what is wrong, or nothing.
  std::optional<failure> check(uint64_t id, holder_id holder) const {
    auto i = records_.find(id);
    if (i == records_.end())
      return failure{never_issued_,
                     noun_ + " " + std::to_string(id) + " is not held: never issued or already released"};
    if (i->second.holder != holder)
      return failure{foreign_, noun_ + " " + std::to_string(id) + " on '" + i->second.model
                                 + "' belongs to another holder"};
    return std::nullopt;
  }

  const Record* find(uint64_t id) const {
    auto i = records_.find(id);
    return i == records_.end() ? nullptr : &i->second;
  }
  Record* find(uint64_t id) {
    auto i = records_.find(id);
    return i == records_.end() ? nullptr : &i->second;
  }

  /// Removes a claim that exists and returns its record.
  Record take(uint64_t id) {
    auto i = records_.find(id);
    if (i == records_.end())
      throw std::logic_error(noun_ + " " + std::to_string(id) + " taken but not held");
    auto record = std::move(i->second);
    records_.erase(i);
    issued_at_.erase(id);
    auto h = by_holder_.find(record.holder);
    h->second.erase(id);
    if (h->second.empty())
      by_holder_.erase(h);
    return record;
  }

  /// The ids of every claim `holder` has, oldest first.
  std::vector<uint64_t> held_by(holder_id holder) const {
    auto h = by_holder_.find(holder);
    return h == by_holder_.end() ? std::vector<uint64_t>{} : std::vector<uint64_t>(h->second.begin(), h->second.end());
  }
  size_t count_of(holder_id holder) const {
    auto h = by_holder_.find(holder);
    return h == by_holder_.end() ? 0 : h->second.size();
  }
  size_t size() const { return records_.size(); }

  template <class F>
  void for_each(F f) const {
    for (const auto& kv : records_)
      f(kv.first, kv.second);
  }

  /// Throws std::logic_error if the per-holder index disagrees with the records.
  void check_invariants() const {
    size_t indexed = 0;
    for (const auto& kv : by_holder_) {
      for (auto id : kv.second) {
        auto i = records_.find(id);
        if (i == records_.end() || i->second.holder != kv.first)
          throw std::logic_error("the " + noun_ + " book's holder index names " + noun_ + " "
                                 + std::to_string(id) + " wrongly");
      }
      indexed += kv.second.size();
    }
    if (indexed != records_.size())
      throw std::logic_error("the " + noun_ + " book indexes " + std::to_string(indexed) + " of "
                             + std::to_string(records_.size()) + " claims by holder");
  }

private:
  std::string noun_;
  errc never_issued_;
  errc foreign_;
  std::unordered_map<uint64_t, Record> records_;
  std::unordered_map<uint64_t, std::chrono::steady_clock::time_point> issued_at_;
  std::unordered_map<holder_id, std::set<uint64_t>> by_holder_;
  uint64_t next_ = 1;
};

} // namespace mcache
