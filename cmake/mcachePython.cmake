# Note [The Python binding] (python/module.cpp): finds what the `mcache` Python package needs, a Python
# whose `torch` is built from the LibTorch this project links (Debian's python3-torch beside libtorch-dev),
# its libtorch_python, and pybind11. Sets MCACHE_PYTHON_FOUND and, for the module, Python3_EXECUTABLE and
# MCACHE_TORCH_PYTHON_LIBRARY. Included before the libraries are defined: the module needs them
# position-independent.
#
# Where pybind11's CMake package is missing (the GPU machine: no pybind11-dev), the pybind11 headers a
# pip-installed torch ships (torch/include/pybind11) are enough: MCACHE_PYBIND11_INCLUDE_DIR is then a
# folder holding only them, and python/CMakeLists.txt builds the module with Python3_add_library.
# MCACHE_PYBIND11_HEADERS_FROM names another folder holding pybind11/ (a test of that path).
set(MCACHE_PYTHON_FOUND OFF)
if(NOT DEFINED Python3_EXECUTABLE)
  # The Python whose torch is the LibTorch linked here (Torch_DIR lies under its cmake_prefix_path), else
  # the first that imports torch: the system one (Debian's python3-torch lives there), then the one on
  # PATH (a pip-installed torch, as on the GPU machine).
  find_program(_mcache_path_python python3 NO_CACHE)
  set(_mcache_with_torch "")
  foreach(_candidate /usr/bin/python3 ${_mcache_path_python})
    if(EXISTS "${_candidate}")
      execute_process(COMMAND "${_candidate}" -c "import torch; print(getattr(torch.utils, 'cmake_prefix_path', ''))"
                      RESULT_VARIABLE _mcache_rc OUTPUT_VARIABLE _mcache_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_mcache_rc EQUAL 0)
        if(NOT _mcache_with_torch)
          set(_mcache_with_torch "${_candidate}")
        endif()
        if(_mcache_prefix AND Torch_DIR)
          string(FIND "${Torch_DIR}" "${_mcache_prefix}" _mcache_at)
          if(_mcache_at EQUAL 0)
            set(_mcache_with_torch "${_candidate}")
            break()
          endif()
        endif()
      endif()
    endif()
  endforeach()
  if(_mcache_with_torch)
    set(Python3_EXECUTABLE "${_mcache_with_torch}")
  elseif(EXISTS /usr/bin/python3)
    set(Python3_EXECUTABLE /usr/bin/python3)
  endif()
endif()
find_package(Python3 COMPONENTS Interpreter Development.Module QUIET)
find_package(pybind11 CONFIG QUIET)
unset(MCACHE_PYBIND11_INCLUDE_DIR)
unset(MCACHE_PYBIND11_INCLUDE_DIR CACHE)
if(Python3_FOUND AND NOT pybind11_FOUND)
  set(_mcache_headers "${MCACHE_PYBIND11_HEADERS_FROM}")
  if(NOT _mcache_headers)
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))"
      OUTPUT_VARIABLE _mcache_headers ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  endif()
  if(_mcache_headers AND EXISTS "${_mcache_headers}/pybind11/pybind11.h")
    # Only pybind11 from there: torch's include folder also holds ATen, c10 and torch, which must come
    # from the LibTorch linked here.
    set(MCACHE_PYBIND11_INCLUDE_DIR "${CMAKE_BINARY_DIR}/pybind11-include")
    file(MAKE_DIRECTORY "${MCACHE_PYBIND11_INCLUDE_DIR}")
    file(CREATE_LINK "${_mcache_headers}/pybind11" "${MCACHE_PYBIND11_INCLUDE_DIR}/pybind11" SYMBOLIC)
    message(STATUS "mcache: no pybind11 package; using the pybind11 headers in ${_mcache_headers}")
  endif()
endif()
if(Python3_FOUND AND (pybind11_FOUND OR MCACHE_PYBIND11_INCLUDE_DIR))
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c "import os, torch; print(torch.__version__.split('+')[0]); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
    OUTPUT_VARIABLE _mcache_torch_out RESULT_VARIABLE _mcache_torch_rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_mcache_torch_rc EQUAL 0)
    string(REPLACE "\n" ";" _mcache_torch_out "${_mcache_torch_out}")
    list(GET _mcache_torch_out 0 _mcache_torch_version)
    list(GET _mcache_torch_out 1 _mcache_torch_lib)
    find_library(MCACHE_TORCH_PYTHON_LIBRARY torch_python PATHS "${_mcache_torch_lib}" NO_DEFAULT_PATH)
    string(REGEX MATCH "^[0-9]+\\.[0-9]+" _mcache_py_minor "${_mcache_torch_version}")
    string(REGEX MATCH "^[0-9]+\\.[0-9]+" _mcache_cxx_minor "${Torch_VERSION}")
    if(MCACHE_TORCH_PYTHON_LIBRARY AND _mcache_py_minor STREQUAL _mcache_cxx_minor)
      set(MCACHE_PYTHON_FOUND ON)
    else()
      set(_mcache_python_why "the Python's torch ${_mcache_torch_version} is not the LibTorch ${Torch_VERSION} linked here, or has no libtorch_python")
    endif()
  else()
    set(_mcache_python_why "${Python3_EXECUTABLE} cannot import torch (Debian: python3-torch)")
  endif()
else()
  set(_mcache_python_why "no Python 3 development files, or no pybind11 (Debian: python3-dev, pybind11-dev; or a torch that ships its headers)")
endif()
if(NOT MCACHE_PYTHON_FOUND)
  message(STATUS "mcache: the Python package is not built: ${_mcache_python_why}")
endif()
