#include <natgrad/core/random.h>
#include <natgrad/likelihood/likelihood.h>

#include "core/link_functions.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

const char* to_string(LikelihoodKind kind) {
  switch (kind) {
    case LikelihoodKind::categorical: return "categorical";
    case LikelihoodKind::gaussian: return "gaussian";
    case LikelihoodKind::bernoulli: return "bernoulli";
  }
  return "unknown";
}

const char* to_string(FisherKind kind) {
  switch (kind) {
    case FisherKind::exact: return "exact";
    case FisherKind::mc: return "mc";
    case FisherKind::empirical: return "empirical";
  }
  return "unknown";
}

LikelihoodKind likelihood_from_string(const std::string& name) {
  for (auto k : {LikelihoodKind::categorical, LikelihoodKind::gaussian, LikelihoodKind::bernoulli})
    if (name == to_string(k)) return k;
  detail::fail("unknown likelihood \"" + name + "\" (known: categorical, gaussian, bernoulli)");
}

FisherKind fisher_kind_from_string(const std::string& name) {
  for (auto k : {FisherKind::exact, FisherKind::mc, FisherKind::empirical})
    if (name == to_string(k)) return k;
  detail::fail("unknown Fisher kind \"" + name + "\" (known: exact, mc, empirical)");
}

template <typename Scalar>
void check_targets(LikelihoodKind kind, const Dataset<Scalar>& data, Index C) {
  const Index N = data.size();
  if (kind == LikelihoodKind::categorical) {
    if (static_cast<Index>(data.labels.size()) != N)
      detail::fail("categorical likelihood needs " + std::to_string(N) + " class labels, got " +
                                  std::to_string(data.labels.size()));
    for (std::size_t n = 0; n < data.labels.size(); ++n)
      if (data.labels[n] < 0 || data.labels[n] >= C)
        detail::fail("class label " + std::to_string(data.labels[n]) + " of sample " + std::to_string(n) +
                                    " is outside [0, " + std::to_string(C) + ")");
    return;
  }
  if (data.targets.rows() != C || data.targets.cols() != N)
    detail::fail(std::string(to_string(kind)) + " likelihood needs targets of shape [" +
                                std::to_string(N) + ", " + std::to_string(C) + "], got [" +
                                std::to_string(data.targets.cols()) + ", " + std::to_string(data.targets.rows()) + "]");
  if (!data.targets.allFinite()) detail::fail("targets contain NaN or Inf");
  if (kind == LikelihoodKind::bernoulli && (data.targets.minCoeff() < 0 || data.targets.maxCoeff() > 1))
    detail::fail("bernoulli targets must lie in [0, 1]");
}

using detail::sigmoid;
using detail::softmax;

namespace {
// y ~ Bernoulli(σ(z)) from draw `counter` of rng: exactly 0 or 1.
template <typename Scalar>
Scalar bernoulli_draw(const CounterRng& rng, Index counter, Scalar z) {
  return rng.uniform(static_cast<uint64_t>(counter)) < double(sigmoid(z)) ? Scalar(1) : Scalar(0);
}
}  // namespace

template <typename Scalar>
double nll_sum(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0) {
  const Index C = Z.rows();
  double total = 0;
  for (Index j = 0; j < Z.cols(); ++j) {
    const Scalar* z = Z.col(j).data();
    switch (kind) {
      case LikelihoodKind::categorical: {
        const Scalar m = *std::max_element(z, z + C);
        double s = 0;
        for (Index c = 0; c < C; ++c) s += std::exp(double(z[c] - m));
        total += double(m) + std::log(s) - double(z[data.labels[col0 + j]]);
        break;
      }
      case LikelihoodKind::gaussian:
        total += 0.5 * (data.targets.col(col0 + j) - Z.col(j)).template cast<double>().squaredNorm();
        break;
      case LikelihoodKind::bernoulli:
        for (Index c = 0; c < C; ++c) {
          const double x = z[c], y = data.targets(c, col0 + j);
          total += std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::abs(x)));
        }
        break;
    }
  }
  return total;
}

template <typename Scalar>
void nll_gradient(LikelihoodKind kind, ConstMatMap<Scalar> Z, const Dataset<Scalar>& data, Index col0,
                  MatMap<Scalar> G) {
  const Index C = Z.rows();
  for (Index j = 0; j < Z.cols(); ++j) {
    Scalar* g = G.col(j).data();
    switch (kind) {
      case LikelihoodKind::categorical:
        softmax(Z.col(j).data(), C, g);
        g[data.labels[col0 + j]] -= Scalar(1);
        break;
      case LikelihoodKind::gaussian:
        G.col(j) = Z.col(j) - data.targets.col(col0 + j);
        break;
      case LikelihoodKind::bernoulli:
        for (Index c = 0; c < C; ++c) g[c] = sigmoid(Z(c, j)) - data.targets(c, col0 + j);
        break;
    }
  }
}

template <typename Scalar>
void sample_scores(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed, Index sample0, int draws,
                   MatMap<Scalar> S) {
  const Index C = Z.rows();
  Vec<Scalar> p(C);
  for (Index j = 0; j < Z.cols(); ++j) {
    const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(sample0 + j)));
    const Scalar* z = Z.col(j).data();
    if (kind == LikelihoodKind::categorical) softmax(z, C, p.data());
    for (int s = 0; s < draws; ++s) {
      Scalar* out = S.col(j * draws + s).data();
      switch (kind) {
        case LikelihoodKind::categorical: {  // y by inverse CDF; score onehot(y) − p
          const Index y = detail::sample_categorical(p.data(), C, rng.uniform(static_cast<uint64_t>(s)));
          for (Index c = 0; c < C; ++c) out[c] = -p[c];
          out[y] += Scalar(1);
          break;
        }
        case LikelihoodKind::gaussian:  // y = z + ε; score y − z = ε
          for (Index c = 0; c < C; ++c) out[c] = static_cast<Scalar>(rng.normal(static_cast<uint64_t>(s * C + c)));
          break;
        case LikelihoodKind::bernoulli:  // y_c ~ Bernoulli(σ(z_c)); score y − σ(z)
          for (Index c = 0; c < C; ++c) out[c] = bernoulli_draw(rng, s * C + c, z[c]) - sigmoid(z[c]);
          break;
      }
    }
  }
}

template <typename Scalar>
Dataset<Scalar> sample_targets(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed) {
  // The same draws as sample_scores' draw 0, but the targets themselves: reading a label back from its score
  // onehot(y) − p ties when p_y rounds to 1, and (y − σ) + σ need not be exactly 0 or 1.
  const Index C = Z.rows(), N = Z.cols();
  Dataset<Scalar> out;
  Vec<Scalar> p(C);
  if (kind != LikelihoodKind::categorical) out.targets.resize(C, N);
  for (Index j = 0; j < N; ++j) {
    const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(j)));
    switch (kind) {
      case LikelihoodKind::categorical:
        softmax(Z.col(j).data(), C, p.data());
        out.labels.push_back(detail::sample_categorical(p.data(), C, rng.uniform(0)));
        break;
      case LikelihoodKind::gaussian:
        for (Index c = 0; c < C; ++c) out.targets(c, j) = Z(c, j) + static_cast<Scalar>(rng.normal(uint64_t(c)));
        break;
      case LikelihoodKind::bernoulli:
        for (Index c = 0; c < C; ++c) out.targets(c, j) = bernoulli_draw(rng, c, Z(c, j));
        break;
    }
  }
  return out;
}

#define NATGRAD_INSTANTIATE(S)                                                                                   \
  template void check_targets<S>(LikelihoodKind, const Dataset<S>&, Index);                                    \
  template double nll_sum<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index);                        \
  template void nll_gradient<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index, MatMap<S>);          \
  template void sample_scores<S>(LikelihoodKind, ConstMatMap<S>, uint64_t, Index, int, MatMap<S>);             \
  template Dataset<S> sample_targets<S>(LikelihoodKind, ConstMatMap<S>, uint64_t);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
