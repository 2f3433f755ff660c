#pragma once
// What the README's examples take for granted: the runtime, the file loaders, CAF, and a `use` that
// stands for the caller's own work.

#include "runtime/core/models/model_files.hpp"
#include "runtime/runtime.hpp"

#include <caf/all.hpp>

namespace readme {
template <class T>
void use(const T&) {}
extern const int example_count;
} // namespace readme
