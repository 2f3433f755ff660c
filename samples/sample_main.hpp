#pragma once
// What the sample programs share around their main.

#include "messages/errc.hpp"

#include <cstdio>

namespace mcache::samples {

/// Runs a sample's body; a refusal the runtime reports (a budget too small for the models, a port in use)
/// is printed with exit code 2, not std::terminate.
inline int main_reporting_refusals(int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const request_error& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
}

} // namespace mcache::samples
