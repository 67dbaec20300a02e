// File-system helpers that must not go through std::filesystem.
#pragma once

#include <string>

#include "forge/export.h"

namespace forge::util {

// Removes a file, or a folder and everything under it (symbolic links are
// removed, never followed). Returns true when nothing is left at `path`
// (also when there was nothing to begin with); on failure `error` (when
// given) says which entry could not be removed and why.
//
// Why not std::filesystem::remove_all: the torch wheel's libtorch_cpu.so and
// libtorch.so export their own (older) copy of std::filesystem's internals.
// When a process's symbol lookup mixes that copy with the system's
// libstdc++, remove_all crashes: on a machine whose libstdc++ is newer than
// the wheel's (GCC 13/14) even with libstdc++ first in the executable's
// NEEDED list (docs/abi.md, "Process-wide symbol order"). nftw() is libc's.
FORGE_API bool remove_tree(const std::string& path, std::string* error = nullptr);

// Flushes a file's or folder's data to the disk (fsync), so a rename that
// follows cannot outlive the data it names after a power loss. RuntimeError
// naming the path when it cannot.
FORGE_API void sync_path(const std::string& path);

}  // namespace forge::util
