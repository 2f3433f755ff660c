#pragma once
// The runtime's error codes. CAF-free so that the core tiers can return them; `errors.hpp` turns them into
// caf::error values for the actor boundary. Every value says when it happens.

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mcache {

enum class errc : uint8_t {
  /// The model id is not registered in the catalog. Register it first; lookups never load.
  unknown_model = 1,
  /// The lease id was never issued, or was already released (double release, use after release).
  invalid_lease,
  /// The lease exists but is held by another holder (another session). Leases are not transferable.
  foreign_lease,
  /// The pin id was never issued, or was already released.
  invalid_pin,
  /// The pin exists but is held by another holder.
  foreign_pin,
  /// The device index is outside the devices this runtime was started with.
  invalid_device,
  /// The model (plus the working memory asked for) is larger than everything the tier could ever free.
  /// Raise the budget, lower the reserve or the working memory, or use another device.
  model_too_large,
  /// Not enough memory could be freed before the caller's deadline: everything else is leased or pinned.
  /// The error text gives bytes wanted, free, and held (by whom). Release leases/pins or raise the budget.
  budget_exhausted,
  /// The model's loader failed or returned something other than what the catalog declared; the text keeps
  /// the loader's own message.
  load_failed,
  /// The copy to the device failed (backend error text kept).
  copy_failed,
  /// The device's allocator failed during a copy although the budget had room (fragmentation, another
  /// process). The tier freed every unpinned model and retried, then tried partial residency; this is
  /// what was left. Lower the budget to what the device really has.
  device_oom,
  /// A client's own CAF request timeout passed before the answer came (the runtime's deadlines never
  /// produce it: they bound the wait for room and give `budget_exhausted`). Clients that use
  /// `caf::infinite`, as `session` does, never see it.
  timed_out,
  /// The runtime is shutting down and accepts no new work.
  shutting_down,
  /// An option or argument is outside its valid range (zero or absurd budgets, negative sizes, ...).
  invalid_argument,
  /// The model is pinned on this device and cannot be offloaded until every pin is released.
  model_pinned,
  /// A model file is malformed: truncated, a header longer than the file, bad JSON, offsets outside the
  /// data or overlapping, a shape that disagrees with its byte range, an unknown dtype. The text names the
  /// file and the problem.
  bad_file,
  /// A model file changed on disk after it was registered (its size or modification time differ); register
  /// it again to pick up the new contents.
  file_changed,
  /// A model file (or a shard of it) does not exist or cannot be opened.
  file_missing,
  /// The model is leased in RAM and cannot be trimmed until every lease is released.
  model_leased,
  /// The model is not resident in this tier (nothing to offload or trim), or is still arriving.
  not_resident,
  /// Withdrawn by its holder: a scheduled job cancelled by its submitter before it ended (what it held was
  /// released), or a request a session's wait check (Ctrl-C in Python) withdrew while it waited.
  cancelled,
  /// A scheduled job did not end before its deadline; what it held was released.
  deadline_exceeded,
  /// A scheduled job's work threw; the text keeps the exception's message. What it held was released.
  work_failed,
  /// A fleet node has no pipeline of that name (pipelines are functions registered on the node: code
  /// does not travel). The text lists the node's pipelines.
  unknown_pipeline,
  /// No fleet node could run the job: none is up with the pipeline, or the node running it was lost and
  /// the one node it was sent to again was lost too (Note [Exactly once], runtime/core/fleet/routing.hpp).
  node_unavailable,
};
/// The last value (for code that walks every error).
constexpr errc last_errc = errc::node_unavailable;

/// The enum value's name, e.g. "budget_exhausted".
const char* to_string(errc code) noexcept;

/// A failure inside a tier: a code and an actionable text (what was asked, what was free, what to change).
struct failure {
  errc code;
  std::string detail;
};

/// A request failed: `code()` says which way, `what()` says what was asked, what was free, what to change.
/// Thrown by the blocking API (sessions, handles, streams).
class request_error : public std::runtime_error {
public:
  explicit request_error(failure f);
  errc code() const noexcept { return code_; }
  /// The failure as thrown (its text without the "mcache: code: " prefix of `what()`).
  failure as_failure() const { return {code_, detail_}; }

private:
  errc code_;
  std::string detail_;
};


} // namespace mcache
