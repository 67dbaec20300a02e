# FORGE_SANITIZE=<list>: build every forge target (core, host, plugins, tests)
# under the named sanitizers, e.g. -DFORGE_SANITIZE=address,undefined or
# -DFORGE_SANITIZE=thread. FORGE_FUZZ=ON adds the libFuzzer targets in fuzz/
# (clang only) and coverage instrumentation for them. LibTorch itself is not
# instrumented; docs/sanitizers.md says what that means and which options and
# suppressions the runs use (cmake/sanitizers/).
set(FORGE_SANITIZE "" CACHE STRING "Sanitizers for every forge target: address,undefined or thread (docs/sanitizers.md)")
option(FORGE_FUZZ "Build the libFuzzer targets in fuzz/ (needs clang; docs/sanitizers.md)" OFF)

if(FORGE_FUZZ AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "forge: FORGE_FUZZ=ON needs clang (libFuzzer); configure with "
                      "-DCMAKE_CXX_COMPILER=clang++-14, as scripts/sanitize.sh does.")
endif()
if(FORGE_FUZZ AND NOT FORGE_SANITIZE)
  set(FORGE_SANITIZE "address,undefined" CACHE STRING "" FORCE)
endif()

set(FORGE_SANITIZED OFF)
if(FORGE_SANITIZE)
  if(NOT FORGE_SANITIZE MATCHES "^(address|undefined|thread|leak)(,(address|undefined|thread|leak))*$")
    message(FATAL_ERROR "forge: FORGE_SANITIZE='${FORGE_SANITIZE}' is not a comma-separated list of "
                        "address, undefined, leak, thread (for example address,undefined)")
  endif()
  set(FORGE_SANITIZED ON)
  set(_san -fsanitize=${FORGE_SANITIZE})
  # Findings stop the program (a test that hits one fails) instead of printing and going on.
  list(APPEND _san -fno-sanitize-recover=all -fno-omit-frame-pointer)
  # Line tables only: file:line in every report at a fraction of full -g's cost.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    list(APPEND _san -gline-tables-only)
  else()
    list(APPEND _san -g1)
  endif()
  if(FORGE_SANITIZE MATCHES "undefined")
    # vptr and function compare type_info across shared objects; with hidden
    # visibility (docs/abi.md) the core, each plugin and LibTorch hold their own
    # copies, so every cross-library virtual call would be reported.
    list(APPEND _san -fno-sanitize=vptr)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      list(APPEND _san -fno-sanitize=function)
    endif()
  endif()
  add_compile_options(${_san})
  add_link_options(-fsanitize=${FORGE_SANITIZE})
  if(FORGE_FUZZ)
    # Coverage for libFuzzer in every library the fuzz targets reach.
    add_compile_options(-fsanitize=fuzzer-no-link)
  endif()
  message(STATUS "forge: sanitizers ${FORGE_SANITIZE} (fuzz targets: ${FORGE_FUZZ})")
endif()

# forge_no_undefined(<target>): --no-undefined, except under sanitizers, where
# shared objects leave the sanitizer runtime's symbols to the executable.
function(forge_no_undefined target)
  if(NOT FORGE_SANITIZED)
    target_link_options(${target} PRIVATE "LINKER:--no-undefined")
  endif()
endfunction()
