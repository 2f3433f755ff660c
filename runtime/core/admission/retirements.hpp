#pragma once
// Note [Remove and replace] (catalog.hpp), the part both tiers share: which generations a tier was told
// are retired, and which of them it still watches because a copy may remain here to drop once nothing
// holds it. Retired ids are remembered for good (they are never reused), so a request made before the
// retirement that arrives late (a pin from an old lease) re-arms the watch. What "holds" and "drop" mean
// is the tier's.

#include "messages/ids.hpp"

#include <iterator>
#include <set>

namespace mcache {

/// What a tier's step did with a watched retired model.
enum class retired_copy {
  held,     // a copy is here and held (or still arriving): keep watching
  dropped,  // a copy was here, unheld, and the tier dropped it: keep watching until it is gone
  gone,     // no copy here and no request for one: stop watching
  awaited,  // no copy here, but a request made before may still bring one: keep watching
};

class retirements {
public:
  void retire(const model_id& generation) {
    retired_.insert(generation);
    watched_.insert(generation);
  }
  /// A request for `generation` arrived; if it is retired, its copy is watched again.
  void asked_for(const model_id& generation) {
    if (retired_.count(generation))
      watched_.insert(generation);
  }
  bool retired(const model_id& generation) const { return retired_.count(generation) > 0; }
  bool watching() const { return !watched_.empty(); }
  /// Runs `step(generation)` for every watched generation; stops watching those it says are gone.
  template <class Step>
  void sweep(Step step) {
    for (auto w = watched_.begin(); w != watched_.end();)
      w = step(*w) == retired_copy::gone ? watched_.erase(w) : std::next(w);
  }

private:
  std::set<model_id> retired_;
  std::set<model_id> watched_;
};

} // namespace mcache
