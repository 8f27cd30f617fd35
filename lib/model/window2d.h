// Private: the geometry of a 2-D sliding window (conv2d, max and average pooling), one spatial axis at a
// time. Output o at kernel tap i reads input coordinate o·stride − pad + i, which is padding unless it lies
// in [0, in); there are ⌊(in + 2·pad − kernel)/stride⌋ + 1 outputs (PyTorch's floor mode).
#pragma once

#include <natgrad/core/types.h>

#include <algorithm>

namespace natgrad {
namespace detail {

struct WindowAxis {
  Index in = 0, kernel = 1, stride = 1, pad = 0, out = 0;

  static WindowAxis make(Index in, Index kernel, Index stride, Index pad) {
    WindowAxis a{in, kernel, stride, pad, 0};
    a.out = a.fits() ? (in + 2 * pad - kernel) / stride + 1 : 0;
    return a;
  }
  /// Whether the kernel fits in the padded input (at least one output).
  bool fits() const { return in + 2 * pad >= kernel; }
  /// The input coordinate output o reads at tap i (outside [0, in): padding).
  Index input(Index o, Index i) const { return o * stride - pad + i; }
  /// The outputs o whose tap i reads inside the input, [lo, hi) (lo = hi when none does).
  void outputs_inside(Index i, Index& lo, Index& hi) const {
    const Index first = pad - i;          // o·stride ≥ pad − i
    const Index last = in - 1 + pad - i;  // o·stride ≤ in − 1 + pad − i
    lo = std::min(out, first <= 0 ? Index(0) : (first + stride - 1) / stride);
    hi = std::clamp(last < 0 ? Index(0) : last / stride + 1, lo, out);
  }
  /// The taps i at which output o reads inside the input, [lo, hi) (lo = hi when none does).
  void taps_inside(Index o, Index& lo, Index& hi) const {
    lo = std::clamp(pad - o * stride, Index(0), kernel);
    hi = std::clamp(in + pad - o * stride, lo, kernel);
  }
};

/// Both axes: height (h) and width (w).
struct Window2d {
  WindowAxis h, w;
};

}  // namespace detail
}  // namespace natgrad
