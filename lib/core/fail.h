// Private: the one way natgrad's readers and builders report bad input at the API boundary.
#pragma once

#include <stdexcept>
#include <string>

namespace natgrad {
namespace detail {

/// Throws std::invalid_argument(what): an API-boundary error whose message already names what it is about.
[[noreturn]] inline void fail(const std::string& what) { throw std::invalid_argument(what); }

/// Throws std::invalid_argument("<where>: <what>"), where names the file, option or layer.
[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
  throw std::invalid_argument(where + ": " + what);
}

}  // namespace detail
}  // namespace natgrad
