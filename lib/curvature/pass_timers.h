// Private: where a Fisher operator's time goes (FisherOptions::profile). Per thread, the seconds of every
// node in each pass — the forward pass, the R-op, the cotangents' backpropagation and the parameter gradient
// — and of the output curvature's head and the reduction; summed over threads into an OperatorProfile. Off
// (the default), every slot is nullptr and a timed scope costs one branch (model/node_timer.h).
#pragma once

#include <natgrad/curvature/fisher_operator.h>

#include <algorithm>
#include <vector>

namespace natgrad {
namespace detail {

class PassTimers {
 public:
  /// Turns profiling on for `threads` threads and `nodes` nodes.
  void start(int threads, std::size_t nodes) {
    nodes_ = nodes;
    seconds_.assign(static_cast<std::size_t>(threads), std::vector<double>(kParts * nodes + 2, 0.0));
  }
  bool on() const { return !seconds_.empty(); }

  /// Thread t's per-node seconds of a pass (nodes entries), or nullptr when off.
  double* forward(int t) { return slot(t, 0); }
  double* rop(int t) { return slot(t, 1); }
  double* backprop(int t) { return slot(t, 2); }
  double* gradient(int t) { return slot(t, 3); }
  /// Thread t's seconds of the products' heads (R-op and H u together) and of the reduction (one slot each).
  double* head(int t) { return slot(t, kParts); }
  double* reduction(int t) { return on() ? slot(t, kParts) + 1 : nullptr; }

  /// A product (or gradient) was timed.
  void count_run() {
    if (on()) ++runs_;
  }
  /// Before a forward pass: its times start from zero.
  void clear_forward() {
    for (std::vector<double>& t : seconds_)
      std::fill(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(nodes_), 0.0);
  }
  /// Clears the products' times (the forward pass's stay).
  void reset() {
    for (std::vector<double>& t : seconds_)
      std::fill(t.begin() + static_cast<std::ptrdiff_t>(nodes_), t.end(), 0.0);
    runs_ = 0;
  }

  OperatorProfile profile() const {
    OperatorProfile p;
    for (std::vector<double>* v : {&p.forward_s, &p.rop_s, &p.backprop_s, &p.gradient_s})
      v->assign(nodes_, 0.0);
    double heads = 0;
    for (const std::vector<double>& t : seconds_) {
      for (std::size_t l = 0; l < nodes_; ++l) {
        p.forward_s[l] += t[l];
        p.rop_s[l] += t[nodes_ + l];
        p.backprop_s[l] += t[2 * nodes_ + l];
        p.gradient_s[l] += t[3 * nodes_ + l];
      }
      heads += t[kParts * nodes_];
      p.reduction_s += t[kParts * nodes_ + 1];
    }
    double rop = 0;
    for (double v : p.rop_s) rop += v;
    p.curvature_s = std::max(0.0, heads - rop);  // the head is the R-op and H u
    p.products = runs_;
    return p;
  }

 private:
  static constexpr std::size_t kParts = 4;  // forward, R-op, backprop, gradient: `nodes_` entries each
  double* slot(int t, std::size_t part) {
    return on() ? seconds_[static_cast<std::size_t>(t)].data() + part * nodes_ : nullptr;
  }
  std::size_t nodes_ = 0;
  std::vector<std::vector<double>> seconds_;  // per thread
  Index runs_ = 0;
};

}  // namespace detail
}  // namespace natgrad
