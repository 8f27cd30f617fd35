#include <natgrad/solvers/deflation_preconditioner.h>

#include <natgrad/core/threads.h>

#include <cmath>
#include <string>

#include "core/fail.h"

namespace natgrad {

namespace {
constexpr Index kBlocks = 64;  // row blocks of Vᵀr: a fixed grid, whatever the thread count
}

template <typename Scalar>
DeflationPreconditioner<Scalar>::DeflationPreconditioner(const Mat<double>& V, const Vec<double>& theta,
                                                         double damping) {
  if (V.cols() != theta.size() || V.cols() == 0)
    detail::fail("deflation: " + std::to_string(V.cols()) + " eigenvectors for " + std::to_string(theta.size()) +
                 " eigenvalues (at least one pair needed)");
  if (!(damping >= 0) || !std::isfinite(damping))
    detail::fail("deflation: damping must be finite and >= 0, got " + std::to_string(damping));
  const double smallest = theta.minCoeff();
  if (!(smallest + damping > 0) || !theta.allFinite())
    detail::fail("deflation: the eigenvalues plus the damping must be finite and positive");
  V_ = V.cast<Scalar>();
  inverse_ = (theta.array() + damping).inverse().matrix();
  complement_ = 1.0 / (smallest + damping);
  t_.resize(V.cols());
  coef_.resize(V.cols());
  w_ = inverse_.array() - complement_;
  block_parts_.resize(kBlocks * V.cols());
}

template <typename Scalar>
void DeflationPreconditioner<Scalar>::project(const Scalar* r, double* t) const {
  const Index n = V_.rows(), k = V_.cols();
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads())
#endif
  for (Index b = 0; b < kBlocks; ++b) {
    const Index i0 = n * b / kBlocks, i1 = n * (b + 1) / kBlocks;
    // The block's part of Vᵀ r: one (vectorized, single-threaded) matrix-vector product.
    using Block = Eigen::Map<const Mat<Scalar>, 0, Eigen::OuterStride<>>;
    const Block Vb(V_.data() + i0, i1 - i0, k, Eigen::OuterStride<>(n));
    Scalar* out = block_parts_.data() + b * k;
    VecMap<Scalar>(out, k).noalias() = Vb.transpose() * ConstVecMap<Scalar>(r + i0, i1 - i0);
  }
  for (Index j = 0; j < k; ++j) {
    double s = 0;
    for (Index b = 0; b < kBlocks; ++b) s += double(block_parts_[b * k + j]);  // in block order
    t[j] = s;
  }
}

template <typename Scalar>
void DeflationPreconditioner<Scalar>::expand(const Scalar* r, Scalar c, const Vec<double>& w, const double* t,
                                             Scalar* z) const {
  const Index n = V_.rows(), k = V_.cols();
  for (Index j = 0; j < k; ++j) coef_[j] = static_cast<Scalar>(w[j] * t[j]);
  const Vec<Scalar>& coef = coef_;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(num_threads())
#endif
  for (Index b = 0; b < kBlocks; ++b) {
    const Index i0 = n * b / kBlocks, i1 = n * (b + 1) / kBlocks;
    for (Index i = i0; i < i1; ++i) z[i] = r ? c * r[i] : Scalar(0);
    for (Index j = 0; j < k; ++j) {
      const Scalar* v = V_.data() + j * n;
      const Scalar a = coef[j];
      for (Index i = i0; i < i1; ++i) z[i] += a * v[i];
    }
  }
}

template <typename Scalar>
void DeflationPreconditioner<Scalar>::apply(const Scalar* r, Scalar* z) const {
  project(r, t_.data());
  expand(r, static_cast<Scalar>(complement_), w_, t_.data(), z);
}

template <typename Scalar>
void DeflationPreconditioner<Scalar>::initial_guess(const Scalar* b, Scalar* x) const {
  project(b, t_.data());
  expand(nullptr, Scalar(0), inverse_, t_.data(), x);
}

template class DeflationPreconditioner<float>;
template class DeflationPreconditioner<double>;

}  // namespace natgrad
