// Private (the library's and the command-line tools' messages): numbers for messages — 4 significant digits
// with an exponent when needed (1e-12 must not print as 0.000000, as std::to_string would), and byte counts
// with the precision they need.
#pragma once

#include <cstdio>
#include <string>

namespace natgrad {
namespace detail {

inline std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

/// A byte count with the precision it needs: "512 B", "9.8 KiB", "1847.0 MiB", "2.41 GiB".
inline std::string format_bytes(double bytes) {
  char buf[32];
  if (bytes < 1024)
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  else if (bytes < 1048576.0)
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024);
  else if (bytes < 1073741824.0)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  return buf;
}

}  // namespace detail
}  // namespace natgrad
