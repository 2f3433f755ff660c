#pragma once
// Eviction policy, apart from the mechanism that evicts (the tiers). A policy only ever sees candidates:
// entries that are resident and unheld (no lease in the RAM tier, no pin in a device tier). A tier removes
// an entry on its first lease/pin and inserts it back on its last release, so a held entry can never be
// chosen as a victim.

#include "messages/ids.hpp"

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace mcache {

class eviction_policy {
public:
  virtual ~eviction_policy() = default;
  /// `model` became a candidate (it is now resident and unheld); counts as a use.
  virtual void insert(const model_id& model) = 0;
  /// `model` is no longer a candidate (it was held, evicted or offloaded). No-op when absent.
  virtual void erase(const model_id& model) = 0;
  /// A use of a candidate that keeps it a candidate. No-op when absent.
  virtual void touch(const model_id& model) = 0;
  /// Calls `visit` on candidates in the order they should be evicted, first victim first, until it returns
  /// false. A peek: changes nothing. Admission stops as soon as it has seen enough bytes, so a pin costs
  /// the same with ten cached models as with ten thousand: implementations must not copy their order.
  virtual void visit_victims(const std::function<bool(const model_id&)>& visit) const = 0;
  /// Every candidate in eviction order (a copy: for reports and tests, not for admission).
  std::vector<model_id> victims() const {
    std::vector<model_id> out;
    visit_victims([&](const model_id& m) {
      out.push_back(m);
      return true;
    });
    return out;
  }
  virtual bool contains(const model_id& model) const = 0;
  virtual size_t size() const = 0;

  /// Note [Eviction with known next uses]: the scheduler knows which models its running and queued jobs
  /// will use, and in what order. Given that list (soonest first), a policy evicts first the candidates
  /// with no known next use (in its own order), then those with one, the latest use first: an online
  /// approximation of evicting the model needed farthest in the future. A prefetch never evicts a
  /// candidate with a known next use (`has_next_use`), not even one needed later than what it brings:
  /// it runs while the current stage's models are held, and once they are let go a demand load would
  /// have evicted them instead (measured: trading "needed later" for "needed sooner" moved up to 25%
  /// more bytes). Replaces the previous list.
  void set_next_uses(const std::vector<model_id>& soonest_first);
  bool has_next_use(const model_id& model) const { return rank_.count(model) > 0; }

  /// Note [Cheap to get back goes first]: some victims cost less to lose than others. Without a kept RAM
  /// copy (Note [Copy back instead of a kept RAM copy]), a model that a device holds whole is handed over
  /// when RAM evicts it, and comes back from that device over the link (device to host measured 55 GB/s
  /// from pinned and 14.5 GB/s to pageable memory on the H200 here) where any other model comes back
  /// from the disk (a few GB/s at best). So among the candidates with no known next use, a policy offers
  /// those marked restorable first, in its own order, then the others; candidates with a known next use
  /// keep their order (the one needed latest first), since what is needed soon costs a copy either way.
  /// The preference is strict: a restorable model used a moment ago goes before one only the disk has,
  /// however long idle, so a hot model with no known next use may travel device -> RAM -> device more
  /// than once (each a copy over the link; the scheduler's next uses keep its own models out of this). A
  /// hand-over also leaves the device with the only copy: if that device later evicts it and RAM has no
  /// room for it, the next use reads the disk after all. A mark may name a model that is not a candidate.
  virtual void set_restorable(const model_id& model, bool restorable);
  bool restorable(const model_id& model) const { return restorable_.count(model) > 0; }
  std::size_t restorable_count() const { return restorable_.size(); }

protected:
  std::vector<model_id> next_uses_;                // soonest first, each model once
  std::unordered_map<model_id, std::size_t> rank_; // position in next_uses_
  std::unordered_set<model_id> restorable_;        // Note [Cheap to get back goes first]
};

/// Least recently used first (after Note [Eviction with known next uses] and Note [Cheap to get back goes
/// first]). Every operation is O(1) but a mark that moves a candidate between its two lists, which walks
/// back from the newest end to the candidate's place by last use (short: a model a device just reported
/// holding whole was used a moment ago).
class lru_policy final : public eviction_policy {
public:
  /// `cost_aware = false` ignores the restorable marks (it still records them): plain LRU, for comparison.
  explicit lru_policy(bool cost_aware = true) : cost_aware_(cost_aware) {}
  void insert(const model_id& model) override;
  void erase(const model_id& model) override;
  void touch(const model_id& model) override;
  void set_restorable(const model_id& model, bool restorable) override;
  void visit_victims(const std::function<bool(const model_id&)>& visit) const override;
  bool contains(const model_id& model) const override { return where_.count(model) > 0; }
  size_t size() const override { return where_.size(); }

private:
  struct entry {
    model_id model;
    std::uint64_t used = 0;  // when it was last inserted or touched
  };
  using list = std::list<entry>;
  struct place {
    list* in = nullptr;
    list::iterator at;
  };
  list& list_for(const model_id& model) { return cost_aware_ && restorable(model) ? cheap_ : costly_; }

  bool cost_aware_;
  list cheap_;   // restorable candidates, least recently used first
  list costly_;  // the others, least recently used first
  std::unordered_map<model_id, place> where_;
  std::uint64_t uses_ = 0;
};

/// Makes a fresh policy for a tier. The runtime's options carry one of these (LRU by default).
using policy_factory = std::unique_ptr<eviction_policy> (*)();
std::unique_ptr<eviction_policy> make_lru_policy();

} // namespace mcache
