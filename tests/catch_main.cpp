// The one Catch2 main shared by every test executable. Tests log warnings
// and errors only, unless FORGE_LOG_LEVEL says otherwise.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>

int main(int argc, char** argv) {
  setenv("FORGE_LOG_LEVEL", "warn", /*overwrite=*/0);
  return Catch::Session().run(argc, argv);
}
