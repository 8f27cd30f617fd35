// Private: a file read at given offsets (pread), so a reader takes only the bytes it needs (a safetensors
// header and one rank's rows, one rank's windows of a text) instead of the whole file.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/fail.h"

namespace natgrad {
namespace detail {

/// An open, regular file and its size at opening. read_at may be called from several threads at once
/// (pread does not move a shared position).
class ReadOnlyFile {
 public:
  /// Opens `path`; throws std::invalid_argument("<path>: cannot open file (…)") or "…: is a directory".
  explicit ReadOnlyFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
    struct stat st;
    const bool known = ::fstat(fd_, &st) == 0;
    if (!known || S_ISDIR(st.st_mode)) {
      ::close(fd_);
      fail(path, known ? "is a directory, not a file" : "cannot determine the file size");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~ReadOnlyFile() { ::close(fd_); }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

  /// Copies bytes [offset, offset + n) into dst; a file that ends early (changed while read) is an error.
  void read_at(uint64_t offset, std::size_t n, void* dst) const {
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(path_, std::string("read error (") + std::strerror(errno) + ")");
      if (got == 0) fail(path_, "the file ended early (was it changed while being read?)");
      out += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace detail
}  // namespace natgrad
