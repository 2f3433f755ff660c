#include "messages/errc.hpp"

namespace mcache {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::unknown_model: return "unknown_model";
    case errc::invalid_lease: return "invalid_lease";
    case errc::foreign_lease: return "foreign_lease";
    case errc::invalid_pin: return "invalid_pin";
    case errc::foreign_pin: return "foreign_pin";
    case errc::invalid_device: return "invalid_device";
    case errc::model_too_large: return "model_too_large";
    case errc::budget_exhausted: return "budget_exhausted";
    case errc::load_failed: return "load_failed";
    case errc::copy_failed: return "copy_failed";
    case errc::device_oom: return "device_oom";
    case errc::timed_out: return "timed_out";
    case errc::shutting_down: return "shutting_down";
    case errc::invalid_argument: return "invalid_argument";
    case errc::model_pinned: return "model_pinned";
    case errc::bad_file: return "bad_file";
    case errc::file_changed: return "file_changed";
    case errc::file_missing: return "file_missing";
    case errc::model_leased: return "model_leased";
    case errc::not_resident: return "not_resident";
    case errc::cancelled: return "cancelled";
    case errc::deadline_exceeded: return "deadline_exceeded";
    case errc::work_failed: return "work_failed";
    case errc::unknown_pipeline: return "unknown_pipeline";
    case errc::node_unavailable: return "node_unavailable";
  }
  return "unknown_error";
}

request_error::request_error(failure f)
  : std::runtime_error(std::string{"mcache: "} + to_string(f.code) + ": " + f.detail), code_(f.code),
    detail_(std::move(f.detail)) {}

} // namespace mcache
