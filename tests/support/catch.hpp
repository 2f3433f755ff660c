#pragma once
// Include this instead of <catch2/catch.hpp>: Debian's LibTorch pulls in glog, whose CHECK would silently
// replace Catch's if a torch header came later. Including a torch header first makes Catch's win.
#include <c10/util/Logging.h>

#include <catch2/catch.hpp>
