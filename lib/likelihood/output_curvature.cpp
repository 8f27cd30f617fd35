#include <natgrad/likelihood/output_curvature.h>

#include "core/link_functions.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

template <typename Scalar>
OutputCurvature<Scalar>::OutputCurvature(LikelihoodKind likelihood, FisherKind kind, int mc_samples, uint64_t seed,
                                         ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index positions,
                                         bool keep_probabilities, Index first_sample)
    : likelihood_(likelihood), kind_(kind), draws_(kind == FisherKind::mc ? mc_samples : 1),
      num_outputs_(Z.rows()), positions_(positions), num_samples_(Z.cols()) {
  if (kind == FisherKind::mc && mc_samples < 1)
    detail::fail("mc_samples must be at least 1, got " + std::to_string(mc_samples));
  const Index C = num_outputs_, N = num_samples_, T = positions_, c1 = C / T;
  const bool has_labels = likelihood == LikelihoodKind::categorical &&
                          static_cast<Index>(data.labels.size()) == N * T;
  if (has_labels && counted_labels(data.labels) < N * T) {
    ignored_.resize(static_cast<std::size_t>(N * T));
    for (std::size_t k = 0; k < ignored_.size(); ++k) ignored_[k] = data.labels[k] == kIgnoreIndex;
  }
  switch (kind) {
    case FisherKind::exact:
      if (likelihood == LikelihoodKind::categorical && !keep_probabilities) {
        logits_ = Z.data();
      } else if (likelihood == LikelihoodKind::categorical) {
        stat_.resize(C, N);
        dominant_.resize(static_cast<std::size_t>(N * T));
        for (Index k = 0; k < N * T; ++k) {  // position k % T of sample k / T: a block of c1 classes
          detail::softmax(Z.data() + k * c1, c1, stat_.data() + k * c1);
          ConstVecMap<Scalar>(stat_.data() + k * c1, c1).maxCoeff(&dominant_[static_cast<std::size_t>(k)]);
        }
      } else if (likelihood == LikelihoodKind::bernoulli) {
        stat_ = Z.unaryExpr([](Scalar z) { return detail::sigmoid_derivative(z); });
      }
      break;
    case FisherKind::mc:
      stat_.resize(C, N * draws_);
      sample_scores<Scalar>(likelihood, Z, seed, first_sample, draws_, MatMap<Scalar>(stat_.data(), C, N * draws_), T,
                            has_labels ? data.labels.data() : nullptr);
      break;
    case FisherKind::empirical: {
      check_targets(likelihood, data, c1, T);
      stat_.resize(C, N);
      nll_gradient<Scalar>(likelihood, Z, data, 0, MatMap<Scalar>(stat_.data(), C, N), T);
      break;
    }
  }
}

template <typename Scalar>
void OutputCurvature<Scalar>::apply(Index col0, ConstMatMap<Scalar> U, MatMap<Scalar> HU) const {
  const Index n = U.cols();
  if (kind_ == FisherKind::exact) {
    switch (likelihood_) {
      case LikelihoodKind::categorical:
        // H u = p ∘ u − p (pᵀu) = p ∘ (u − pᵀu). Written so, the dominant class m (p_m ≈ 1) gets
        // p_m (u_m − pᵀu), a difference of nearly equal numbers that cancels to nothing in float. With
        // Σp = 1, u_c − pᵀu = d_c − pᵀd for d = u − u_m, where pᵀd = Σ_{c≠m} p_c d_c involves only the
        // small probabilities: (H u)_c = p_c (d_c − pᵀd), accurate for every c.
        // One block per position (T = 1: one per sample). Without kept probabilities, p is computed into
        // the block of HU it then scales in place (each entry reads only its own p).
        for (Index k = 0; k < n * positions_; ++k) {
          const Index c1 = num_outputs_ / positions_, b = col0 * positions_ + k;
          Scalar* h = HU.data() + k * c1;
          if (!ignored_.empty() && ignored_[static_cast<std::size_t>(b)]) {  // a position that counts for nothing
            std::fill(h, h + c1, Scalar(0));
            continue;
          }
          Index m;
          const Scalar* pp;
          if (logits_) {
            detail::softmax(logits_ + b * c1, c1, h);
            ConstVecMap<Scalar>(h, c1).maxCoeff(&m);
            pp = h;
          } else {
            m = dominant_[static_cast<std::size_t>(b)];
            pp = stat_.data() + b * c1;
          }
          const auto p = ConstVecMap<Scalar>(pp, c1).array();
          const auto u = ConstVecMap<Scalar>(U.data() + k * c1, c1).array();
          const Scalar um = u[m];
          const Scalar pd = (p * (u - um)).sum();  // lazy expressions: vectorized, no temporary
          VecMap<Scalar>(h, c1).array() = p * ((u - um) - pd);
        }
        return;
      case LikelihoodKind::gaussian:
        HU = U;
        return;
      case LikelihoodKind::bernoulli:
        HU = stat_.middleCols(col0, n).cwiseProduct(U);
        return;
    }
  }
  // H u = 1/S Σ_s s_s (s_sᵀ u), one score at a time: no temporary, so no allocation per sample.
  const Scalar inv = Scalar(1) / Scalar(draws_);
  for (Index j = 0; j < n; ++j) {
    HU.col(j).setZero();
    for (int s = 0; s < draws_; ++s) {
      const auto score = stat_.col((col0 + j) * draws_ + s);
      HU.col(j) += (inv * score.dot(U.col(j))) * score;
    }
  }
}

template <typename Scalar>
Mat<Scalar> OutputCurvature<Scalar>::dense(Index n) const {
  const Index C = num_outputs_;
  Mat<Scalar> eye = Mat<Scalar>::Identity(C, C), H(C, C);
  for (Index c = 0; c < C; ++c)
    apply(n, ConstMatMap<Scalar>(eye.col(c).data(), C, 1), MatMap<Scalar>(H.col(c).data(), C, 1));
  return H;
}

template class OutputCurvature<float>;
template class OutputCurvature<double>;

}  // namespace natgrad
