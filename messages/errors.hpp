#pragma once
// Errors across actor boundaries: our `errc` as a caf::error of category "mcache", with the actionable
// text as its context.

#include "messages/errc.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/error.hpp>

#include <optional>
#include <string>

namespace mcache {

/// The error category atom of every error this runtime returns.
caf::atom_value error_category();

caf::error make_error(errc code, std::string detail);
caf::error make_error(const failure& f);

/// Our code and text of `e`; CAF's own errors (a request timeout, a dead receiver) are mapped to the
/// nearest code with CAF's text kept.
failure to_failure(const caf::error& e);

/// Registers message types and the error category. Call on every actor_system_config of the runtime.
void register_types(caf::actor_system_config& cfg);

} // namespace mcache
