// agree(): the template behind World's error agreement (world.h).
#pragma once

#include "options.h"

#include <stdexcept>
#include <string>

namespace natgrad {
namespace cli {

template <typename Body>
void agree(const Communicator& comm, Body&& body) {
  if (comm.size() == 1) {
    body();
    return;
  }
  std::string error;  // tagged: 'u' a usage error (exit 2), 'e' any other (exit 1)
  try {
    body();
  } catch (const CLI::ValidationError& e) {
    error = std::string("u") + e.what();
  } catch (const std::exception& e) {
    error = std::string("e") + e.what();
  }
  error = comm.first_error(error);
  if (error.empty()) return;
  if (error[0] == 'u') usage_error(error.substr(1));
  throw std::runtime_error(error.substr(1));
}

}  // namespace cli
}  // namespace natgrad
