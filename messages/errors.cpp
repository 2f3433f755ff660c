#include "messages/errors.hpp"

#include "messages/inspect.hpp"

#include <caf/atom.hpp>
#include <caf/make_message.hpp>
#include <caf/sec.hpp>

namespace mcache {

caf::atom_value error_category() { return caf::atom("mcache"); }

caf::error make_error(errc code, std::string detail) {
  return caf::error{static_cast<uint8_t>(code), error_category(), caf::make_message(std::move(detail))};
}

caf::error make_error(const failure& f) { return make_error(f.code, f.detail); }

failure to_failure(const caf::error& e) {
  std::string text;
  if (e.context().match_elements<std::string>())
    text = e.context().get_as<std::string>(0);
  if (e.category() == error_category())
    return failure{static_cast<errc>(e.code()), text};
  if (e.category() == caf::atom("system")) {
    auto code = static_cast<caf::sec>(e.code());
    text = "CAF: " + caf::to_string(code);
    if (code == caf::sec::request_timeout)
      return failure{errc::timed_out, text};
    if (code == caf::sec::request_receiver_down)
      return failure{errc::shutting_down, text};
  }
  return failure{errc::invalid_argument, "unexpected error: " + caf::to_string(e)};
}

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<ram_stats>("mcache_ram_stats");
  cfg.add_message_type<device_stats>("mcache_device_stats");
  cfg.add_message_type<placement_view>("mcache_placement_view");
  cfg.add_error_category(error_category(), [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string text = std::string{"mcache: "} + to_string(static_cast<errc>(code));
    if (ctx.match_elements<std::string>())
      text += ": " + ctx.get_as<std::string>(0);
    return text;
  });
}

} // namespace mcache
