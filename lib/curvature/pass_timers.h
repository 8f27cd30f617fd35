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
    Thread zero;
    for (std::vector<double>* v : {&zero.forward, &zero.rop, &zero.backprop, &zero.gradient})
      v->assign(nodes, 0.0);
    threads_.assign(static_cast<std::size_t>(threads), zero);
  }
  bool on() const { return !threads_.empty(); }

  /// Thread t's per-node seconds of a pass, or nullptr when off.
  std::vector<double>* forward(int t) { return on() ? &at(t).forward : nullptr; }
  std::vector<double>* rop(int t) { return on() ? &at(t).rop : nullptr; }
  std::vector<double>* backprop(int t) { return on() ? &at(t).backprop : nullptr; }
  std::vector<double>* gradient(int t) { return on() ? &at(t).gradient : nullptr; }
  /// Thread t's seconds of the products' heads (R-op and H u together) and of the reduction.
  double* head(int t) { return on() ? &at(t).head : nullptr; }
  double* reduction(int t) { return on() ? &at(t).reduction : nullptr; }

  /// A product (or gradient) was timed.
  void count_run() {
    if (on()) ++runs_;
  }
  /// Before a forward pass: its times start from zero.
  void clear_forward() {
    for (Thread& t : threads_) std::fill(t.forward.begin(), t.forward.end(), 0.0);
  }
  /// Clears the products' times (the forward pass's stay).
  void reset() {
    for (Thread& t : threads_) {
      for (std::vector<double>* v : {&t.rop, &t.backprop, &t.gradient}) std::fill(v->begin(), v->end(), 0.0);
      t.head = t.reduction = 0;
    }
    runs_ = 0;
  }

  /// Summed over the threads; zeros for each of `nodes` nodes when off.
  OperatorProfile profile(std::size_t nodes) const {
    OperatorProfile p;
    for (std::vector<double>* v : {&p.forward_s, &p.rop_s, &p.backprop_s, &p.gradient_s})
      v->assign(nodes, 0.0);
    double heads = 0;
    for (const Thread& t : threads_) {
      add(p.forward_s, t.forward);
      add(p.rop_s, t.rop);
      add(p.backprop_s, t.backprop);
      add(p.gradient_s, t.gradient);
      heads += t.head;
      p.reduction_s += t.reduction;
    }
    double rop = 0;
    for (double v : p.rop_s) rop += v;
    p.curvature_s = std::max(0.0, heads - rop);  // the head is the R-op and H u
    p.products = runs_;
    return p;
  }

 private:
  struct Thread {
    std::vector<double> forward, rop, backprop, gradient;  // per node
    double head = 0, reduction = 0;
  };
  Thread& at(int t) { return threads_[static_cast<std::size_t>(t)]; }
  static void add(std::vector<double>& sum, const std::vector<double>& v) {
    for (std::size_t l = 0; l < v.size(); ++l) sum[l] += v[l];
  }
  std::vector<Thread> threads_;
  Index runs_ = 0;
};

}  // namespace detail
}  // namespace natgrad
