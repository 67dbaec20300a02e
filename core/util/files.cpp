#include "core/util/files.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge::util {

namespace {

thread_local std::string* t_error = nullptr;

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (std::remove(path) == 0 || errno == ENOENT) return 0;
  if (t_error) *t_error = std::string(path) + ": " + std::strerror(errno);
  return -1;
}

}  // namespace

bool remove_tree(const std::string& path, std::string* error) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  t_error = error;
  // Depth first (children before their folder), never following links.
  const int rc = ::nftw(path.c_str(), remove_entry, 32, FTW_DEPTH | FTW_PHYS);
  t_error = nullptr;
  if (rc != 0 && error && error->empty()) *error = path + ": " + std::strerror(errno);
  return rc == 0;
}

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw RuntimeError(fmt::format("{}: cannot open to sync it", path));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw RuntimeError(fmt::format("{}: fsync failed (disk full or I/O error?)", path));
}

}  // namespace forge::util
