// Private: profiling of the network's passes. A NodeTimer adds the seconds of its scope to timing[l] when
// timing is set, and costs one branch otherwise.
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

namespace natgrad {
namespace detail {

class NodeTimer {
 public:
  NodeTimer(double* timing, std::size_t l) : slot_(timing ? timing + l : nullptr) {
    if (slot_) start_ = std::chrono::steady_clock::now();
  }
  NodeTimer(std::vector<double>* timing, std::size_t l) : NodeTimer(timing ? timing->data() : nullptr, l) {}
  ~NodeTimer() {
    if (slot_) *slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  NodeTimer(const NodeTimer&) = delete;
  NodeTimer& operator=(const NodeTimer&) = delete;

 private:
  double* slot_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace detail
}  // namespace natgrad
