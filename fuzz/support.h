// What every fuzz target shares: a private scratch folder for the files a
// parser reads, splitting one input into parts, and the rule for exceptions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "forge/error.h"

namespace forge::fuzz {

// This process's own folder (libFuzzer's -jobs/-fork runs several), removed at exit.
const std::string& scratch_dir();

// Writes `bytes` to <scratch>/<name> (sub-folders created) and returns the path.
std::string write_file(const std::string& name, std::string_view bytes);

// The input cut at each NUL byte, at most `max_parts` parts (the last keeps the rest).
std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts);

// The folder of generated files the targets read besides their input
// (tokenizers, a clip): $FORGE_FUZZ_DATA, else the build tree's fuzz/data.
std::string data_dir();

// A property of the parser's output that does not hold: abort with `what`,
// which libFuzzer reports as a crash with this input.
[[noreturn]] void violated(const std::string& what);

// Runs `fn` on a parser. Bad input must end in one of forge's errors with a
// message (what the user sees, exit 2); any other exception (std::out_of_range
// from deep inside, a c10::Error, bad_alloc) escapes and is a finding.
template <class F>
void expect_forge_errors(F&& fn) {
  try {
    fn();
  } catch (const forge::Error& e) {
    if (std::string_view(e.what()).empty()) violated("a forge error without a message");
  }
}

}  // namespace forge::fuzz
