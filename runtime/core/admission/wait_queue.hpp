#pragma once
// Note [Admission]: the one discipline both tiers follow for a request that asks for a claim (a RAM lease,
// a device pin). Each tier says only what "room" means for it and how it is made (make_room.hpp); the
// order in which requests get it is decided here, once:
//
//   1. A request that needs no new room is admitted at once, whatever is queued: a RAM hit or a join of a
//      load in flight; a pin of a model already on the device (or being copied there), or one that costs
//      the device nothing (a CPU pin), that asks for no working memory and no staging; or a scheduler
//      stage's later pin whose room its earlier pin reserved (Note [A stage's pins leave room for the
//      ones after]), which ahead of others takes only that room. It takes no other free memory. It does
//      keep a cached model from being evicted while held, so a queued request may wait longer (up to its
//      deadline). Making it wait behind a queued request that may itself be waiting for this holder's
//      memory is how two jobs end up waiting on each other (a job that pins its text encoder, then its
//      transformer, while another job waits for room).
//   2. A request that needs room is tried at once only when nobody is queued: strict FIFO, so a large
//      request is never starved by a stream of small ones.
//   3. Otherwise it waits at the back of the queue until its deadline, or, if it may not wait, is refused
//      at once with `budget_exhausted`, the text saying how many requests are queued ahead of it.
//   4. After every step that frees room (a release, an eviction, an offload or trim, a finished load or
//      copy, an expiry) the queue is served from its head until the head cannot be admitted.
//   5. A deadline bounds the wait for room only: once admitted, a request is answered when its load or
//      copy ends, however long that takes.
//   6. A holder that goes away has its queued requests withdrawn (answered `shutting_down`) before its
//      claims are released, so its releases never admit work for it; at shutdown every queued request is
//      answered `shutting_down`. A holder may also withdraw one request it no longer wants (a cancelled
//      job's, a Ctrl-C's): it is answered `cancelled` at once, queued or admitted. Queued, it leaves the
//      queue, and the queue is served, since it may have been the head. Admitted, it gives back what it
//      was granted and stops waiting for its load or copy, which goes on for the others waiting for it
//      or lands unclaimed (a model cached like any other); a load nobody waits for any more is told to
//      stop (Note [An abandoned load stops]).
//
// What rule 1 does not cover: a job that holds a claim and then asks for one that needs room queues behind
// requests that may be waiting for the claim it holds; both wait until one's deadline passes. Jobs that
// need several models take them together (`acquire_all`), which never holds some while waiting for others.

#include "messages/ids.hpp"

#include <algorithm>
#include <deque>
#include <optional>
#include <vector>

namespace mcache {

/// What `admit_or_wait` did with a request.
enum class admission { admitted, queued, refused };

/// The FIFO of requests waiting for room. `Item` has `request_id request` and `holder_id holder`.
template <class Item>
class wait_queue {
public:
  bool empty() const { return items_.empty(); }
  size_t size() const { return items_.size(); }
  const Item& front() const { return items_.front(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

  /// Rules 1 and 2: may a request be tried now, before anything queued?
  bool may_try_now(bool needs_room) const { return !needs_room || items_.empty(); }

  void push(Item item) { items_.push_back(std::move(item)); }

  /// Rule 4: admits from the head while `try_admit(head)` admits it (true); stops at the first that
  /// cannot be admitted. `try_admit` may change the tier but must not touch the queue.
  template <class TryAdmit>
  void serve(TryAdmit try_admit) {
    while (!items_.empty() && try_admit(items_.front()))
      items_.pop_front();
  }

  bool contains(request_id request) const { return find(request) != nullptr; }
  /// How many requests are queued ahead of `request` (all of them if it is not queued).
  size_t ahead_of(request_id request) const {
    auto i = std::find_if(items_.begin(), items_.end(), [&](const Item& x) { return x.request == request; });
    return static_cast<size_t>(i - items_.begin());
  }
  const Item* find(request_id request) const {
    auto i = std::find_if(items_.begin(), items_.end(), [&](const Item& x) { return x.request == request; });
    return i == items_.end() ? nullptr : &*i;
  }

  /// Removes `request` (its deadline passed, or its holder withdrew it); nothing if it is not queued.
  std::optional<Item> take(request_id request) {
    auto i = std::find_if(items_.begin(), items_.end(), [&](const Item& x) { return x.request == request; });
    if (i == items_.end())
      return std::nullopt;
    auto item = std::move(*i);
    items_.erase(i);
    return item;
  }
  /// Rule 6: removes every request `which` picks (by its request id and holder: one withdrawn, a holder's
  /// when it is gone, all at shutdown), in queue order.
  template <class Which>
  std::vector<Item> take_if(Which which) {
    std::vector<Item> out;
    for (auto i = items_.begin(); i != items_.end();) {
      if (which(i->request, i->holder)) {
        out.push_back(std::move(*i));
        i = items_.erase(i);
      } else {
        ++i;
      }
    }
    return out;
  }

private:
  std::deque<Item> items_;
};

/// Rules 1 to 3 for a new request: admits it (`try_admit(item)` returned true), queues it (moved into the
/// queue), or refuses it (`item` is left to the caller, who answers it).
template <class Item, class TryAdmit>
admission admit_or_wait(wait_queue<Item>& queue, Item& item, bool needs_room, bool may_wait, TryAdmit try_admit) {
  if (queue.may_try_now(needs_room) && try_admit(item))
    return admission::admitted;
  if (!may_wait)
    return admission::refused;
  queue.push(std::move(item));
  return admission::queued;
}

} // namespace mcache
