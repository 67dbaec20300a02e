# Finds every third-party dependency of forge in one place.
#
# LibTorch comes from the PyPI wheel torch==2.11.0 inside FORGE_PYTHON's
# environment (scripts/setup.sh creates it); its CMake package lives at
# torch.utils.cmake_prefix_path.

set(FORGE_PYTHON "" CACHE FILEPATH "Python interpreter whose torch package provides LibTorch")
if(NOT FORGE_PYTHON)
  find_program(_forge_py NAMES python3 python REQUIRED)
  set(FORGE_PYTHON "${_forge_py}" CACHE FILEPATH "" FORCE)
endif()

execute_process(
  COMMAND "${FORGE_PYTHON}" -c "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _torch_info RESULT_VARIABLE _torch_rc ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "forge: cannot import torch with ${FORGE_PYTHON}:\n${_torch_err}\n"
                      "Run scripts/setup.sh, or pass -DFORGE_PYTHON=<python with torch==2.11.0>.")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 FORGE_TORCH_CMAKE_PREFIX)
list(GET _torch_info 1 FORGE_TORCH_PY_VERSION)
list(GET _torch_info 2 FORGE_TORCH_CXX11_ABI)
if(NOT FORGE_TORCH_CXX11_ABI EQUAL 1)
  message(FATAL_ERROR "forge: the torch in ${FORGE_PYTHON} is not built with the C++11 ABI; "
                      "Debian's spdlog/fmt/toml++ need it (libtorch-pitfalls.md section 6).")
endif()
list(PREPEND CMAKE_PREFIX_PATH "${FORGE_TORCH_CMAKE_PREFIX}")

# CUDA: TorchConfig needs a toolkit at configure time for the CUDA wheel.
# Name the architectures ourselves so it does not probe for a GPU.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
endif()
find_package(Torch REQUIRED)
message(STATUS "forge: LibTorch ${FORGE_TORCH_PY_VERSION} from ${FORGE_TORCH_CMAKE_PREFIX}")

# NCCL: c10d's NCCL process group (inside libtorch_cuda.so) is compiled into
# the core when LibTorch has CUDA and nccl.h is found: first the nvidia-nccl
# wheel that torch itself loads (site-packages/nvidia/nccl), then the CUDA
# toolkit. Without it, data parallelism on GPUs falls back to Gloo.
option(FORGE_WITH_NCCL "Compile c10d's NCCL backend into the core when nccl.h is found" ON)
if(FORGE_WITH_NCCL)
  find_library(FORGE_C10_CUDA_LIBRARY c10_cuda PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
  get_filename_component(_torch_site "${FORGE_TORCH_CMAKE_PREFIX}/../../.." ABSOLUTE)
  find_path(NCCL_INCLUDE_DIR nccl.h
            HINTS "${_torch_site}/nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS} ${CUDA_INCLUDE_DIRS})
  if(FORGE_C10_CUDA_LIBRARY AND NCCL_INCLUDE_DIR)
    message(STATUS "forge: NCCL backend on (nccl.h in ${NCCL_INCLUDE_DIR})")
  else()
    message(STATUS "forge: NCCL backend off (LibTorch without CUDA, or no nccl.h); GPUs use Gloo")
    set(FORGE_WITH_NCCL OFF)
  endif()
endif()

find_package(tomlplusplus REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)

# LibTorch ships its own (newer) fmt headers in its include folder, which it
# passes as -isystem. Debian's spdlog is built against Debian's fmt 9, so
# forge must see that fmt: an overlay folder holding only a link to it goes
# first (-I beats -isystem). The installed SDK carries the same overlay.
get_target_property(_fmt_inc fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
list(GET _fmt_inc 0 _fmt_inc)
set(FORGE_FMT_OVERLAY "${CMAKE_BINARY_DIR}/fmt-overlay")
file(MAKE_DIRECTORY "${FORGE_FMT_OVERLAY}")
file(CREATE_LINK "${_fmt_inc}/fmt" "${FORGE_FMT_OVERLAY}/fmt" SYMBOLIC)
add_library(forge_fmt_first INTERFACE)
target_include_directories(forge_fmt_first BEFORE INTERFACE
  $<BUILD_INTERFACE:${FORGE_FMT_OVERLAY}> $<INSTALL_INTERFACE:include/forge-fmt-overlay>)
install(TARGETS forge_fmt_first EXPORT ForgeTargets)
install(DIRECTORY "${FORGE_FMT_OVERLAY}/" DESTINATION include/forge-fmt-overlay)
find_package(Boost 1.74 REQUIRED)            # header-only: Boost.DLL
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(ICU REQUIRED COMPONENTS uc i18n) # Unicode regex for HF tokenizer pre-tokenizers
# Protocol Buffers (Debian's libprotobuf-dev, protobuf-compiler): TensorBoard
# event files, through the lite runtime (core/reporting/tensorboard_event.proto).
find_package(Protobuf 3 REQUIRED)
# FFmpeg's libraries (Debian's libavformat-dev, libavcodec-dev, libswscale-dev): video clips ([video]).
find_package(PkgConfig REQUIRED)
pkg_check_modules(FFMPEG REQUIRED IMPORTED_TARGET libavformat libavcodec libswscale libavutil)
# Gloo's headers (Debian's libgloo-dev) to compile against c10d's Gloo process
# group; the implementation is the one inside LibTorch. Every Gloo type in
# c10d's classes sits behind a pointer, so the header version does not change
# their layout.
find_path(GLOO_INCLUDE_DIR gloo/algorithm.h REQUIRED)
find_path(STB_INCLUDE_DIR stb/stb_image.h REQUIRED)
if(FORGE_SANITIZED)
  # Sanitized and fuzz builds compile stb from the same Debian headers, so the
  # decoders run instrumented (the fuzzer sees inside them, ASan checks them).
  add_library(forge_stb STATIC "${CMAKE_CURRENT_LIST_DIR}/stb_impl.cpp")
  target_include_directories(forge_stb SYSTEM PUBLIC "${STB_INCLUDE_DIR}/stb")
  # Two UBSan checks off, in this file only (docs/sanitizers.md): a PNG whose
  # first IDAT chunk is empty (legal) makes stb copy 0 bytes into a buffer
  # not yet allocated, memcpy(NULL, src, 0); a corrupt JPEG bitstream drives
  # stb's bit reader below zero bits, and its refill shifts by 32 or more.
  # Neither reads or writes memory; ASan stays on for the whole file.
  target_compile_options(forge_stb PRIVATE -w -fno-sanitize=nonnull-attribute,shift-exponent)
else()
  find_library(STB_LIBRARY NAMES stb REQUIRED)  # Debian's compiled stb (stb_image, stb_image_write, ...)
  add_library(forge_stb INTERFACE)
  target_include_directories(forge_stb SYSTEM INTERFACE "${STB_INCLUDE_DIR}/stb")
  target_link_libraries(forge_stb INTERFACE "${STB_LIBRARY}")
endif()
if(FORGE_BUILD_TESTS)
  find_package(Catch2 2 REQUIRED)
endif()
find_package(Threads REQUIRED)
