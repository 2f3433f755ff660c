# Note [The Python binding] (python/module.cpp): finds what the `mcache` Python package needs, a Python
# whose `torch` is built from the LibTorch this project links (Debian's python3-torch beside libtorch-dev),
# its libtorch_python, and pybind11. Sets MCACHE_PYTHON_FOUND and, for the module, Python3_EXECUTABLE and
# MCACHE_TORCH_PYTHON_LIBRARY. Included before the libraries are defined: the module needs them
# position-independent.
set(MCACHE_PYTHON_FOUND OFF)
if(NOT DEFINED Python3_EXECUTABLE AND EXISTS /usr/bin/python3)
  set(Python3_EXECUTABLE /usr/bin/python3)  # the system Python, where Debian's python3-torch lives
endif()
find_package(Python3 COMPONENTS Interpreter Development.Module QUIET)
find_package(pybind11 CONFIG QUIET)
if(Python3_FOUND AND pybind11_FOUND)
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
  set(_mcache_python_why "no Python 3 development files or pybind11 (Debian: python3-dev, pybind11-dev)")
endif()
if(NOT MCACHE_PYTHON_FOUND)
  message(STATUS "mcache: the Python package is not built: ${_mcache_python_why}")
endif()
