# Finds Debian's CAF 0.17 (which ships no CMake package) and provides the targets CAF >= 0.18 would:
# CAF::core, CAF::io and, where libcaf_openssl is there, CAF::openssl (CAF_OPENSSL_FOUND). The GPU
# machine's kit has libcaf-dev, whose libcaf_openssl.so link points to a package it lacks: that link is
# not taken for a library. Building against caf/openssl's headers also needs OpenSSL's
# (CAF_OPENSSL_SSL_INCLUDE_DIR); linking a library built with them does not.
include(FindPackageHandleStandardArgs)
find_path(CAF_INCLUDE_DIR NAMES caf/all.hpp)
find_library(CAF_CORE_LIBRARY NAMES caf_core)
find_library(CAF_IO_LIBRARY NAMES caf_io)
find_library(CAF_OPENSSL_LIBRARY NAMES caf_openssl)
find_path(CAF_OPENSSL_SSL_INCLUDE_DIR NAMES openssl/ssl.h)  # caf/openssl/session.hpp includes it
set(CAF_OPENSSL_FOUND FALSE)
if(CAF_OPENSSL_LIBRARY)
  get_filename_component(_caf_openssl_real "${CAF_OPENSSL_LIBRARY}" REALPATH)
  if(EXISTS "${_caf_openssl_real}")
    set(CAF_OPENSSL_FOUND TRUE)
  endif()
endif()
if(CAF_INCLUDE_DIR AND EXISTS "${CAF_INCLUDE_DIR}/caf/config.hpp")
  file(STRINGS "${CAF_INCLUDE_DIR}/caf/config.hpp" _caf_version_line REGEX "#define CAF_VERSION [0-9]+")
  string(REGEX MATCH "[0-9]+" _caf_version "${_caf_version_line}")
  if(_caf_version)
    math(EXPR _major "${_caf_version} / 10000")
    math(EXPR _minor "(${_caf_version} / 100) % 100")
    math(EXPR _patch "${_caf_version} % 100")
    set(CAF_VERSION "${_major}.${_minor}.${_patch}")
  endif()
endif()
find_package_handle_standard_args(CAF REQUIRED_VARS CAF_CORE_LIBRARY CAF_IO_LIBRARY CAF_INCLUDE_DIR
  VERSION_VAR CAF_VERSION)
if(CAF_FOUND AND NOT TARGET CAF::core)
  find_package(Threads REQUIRED)
  add_library(CAF::core SHARED IMPORTED)
  set_target_properties(CAF::core PROPERTIES IMPORTED_LOCATION "${CAF_CORE_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}" INTERFACE_LINK_LIBRARIES Threads::Threads
    # CAF 0.17's headers use uint64_t without including <cstdint>; libstdc++ 13 (the GPU machine's g++)
    # no longer brings it in through other headers, so every file that sees CAF gets it first.
    INTERFACE_COMPILE_OPTIONS "SHELL:-include cstdint")
  add_library(CAF::io SHARED IMPORTED)
  set_target_properties(CAF::io PROPERTIES IMPORTED_LOCATION "${CAF_IO_LIBRARY}"
    INTERFACE_LINK_LIBRARIES CAF::core)
endif()
if(CAF_FOUND AND CAF_OPENSSL_FOUND AND NOT TARGET CAF::openssl)
  # TLS for CAF's network layer (the fleet's nodes and routers across hosts).
  add_library(CAF::openssl SHARED IMPORTED)
  set_target_properties(CAF::openssl PROPERTIES IMPORTED_LOCATION "${CAF_OPENSSL_LIBRARY}"
    INTERFACE_LINK_LIBRARIES CAF::io)
endif()
