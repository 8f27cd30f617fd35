/// \file format_number.h
/// \brief Internal: a number for a message, 4 significant digits with an exponent when needed (1e-12 must not
/// print as 0.000000, as std::to_string would).
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

}  // namespace detail
}  // namespace natgrad
