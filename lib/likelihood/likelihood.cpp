#include <natgrad/core/random.h>
#include <natgrad/likelihood/likelihood.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

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
  throw std::invalid_argument("unknown likelihood \"" + name + "\" (known: categorical, gaussian, bernoulli)");
}

FisherKind fisher_kind_from_string(const std::string& name) {
  for (auto k : {FisherKind::exact, FisherKind::mc, FisherKind::empirical})
    if (name == to_string(k)) return k;
  throw std::invalid_argument("unknown Fisher kind \"" + name + "\" (known: exact, mc, empirical)");
}

template <typename Scalar>
void check_targets(LikelihoodKind kind, const Dataset<Scalar>& data, Index C) {
  const Index N = data.size();
  if (kind == LikelihoodKind::categorical) {
    if (static_cast<Index>(data.labels.size()) != N)
      throw std::invalid_argument("categorical likelihood needs " + std::to_string(N) + " class labels, got " +
                                  std::to_string(data.labels.size()));
    for (std::size_t n = 0; n < data.labels.size(); ++n)
      if (data.labels[n] < 0 || data.labels[n] >= C)
        throw std::invalid_argument("class label " + std::to_string(data.labels[n]) + " of sample " + std::to_string(n) +
                                    " is outside [0, " + std::to_string(C) + ")");
    return;
  }
  if (data.targets.rows() != C || data.targets.cols() != N)
    throw std::invalid_argument(std::string(to_string(kind)) + " likelihood needs targets of shape [" +
                                std::to_string(N) + ", " + std::to_string(C) + "], got [" +
                                std::to_string(data.targets.cols()) + ", " + std::to_string(data.targets.rows()) + "]");
  if (!data.targets.allFinite()) throw std::invalid_argument("targets contain NaN or Inf");
  if (kind == LikelihoodKind::bernoulli && (data.targets.minCoeff() < 0 || data.targets.maxCoeff() > 1))
    throw std::invalid_argument("bernoulli targets must lie in [0, 1]");
}

namespace {
// p = softmax(z) computed stably; returns log Σ exp(z).
template <typename Scalar>
Scalar softmax(const Scalar* z, Index C, Scalar* p) {
  const Scalar m = *std::max_element(z, z + C);
  Scalar s = 0;
  for (Index c = 0; c < C; ++c) s += (p[c] = std::exp(z[c] - m));
  const Scalar inv = Scalar(1) / s;
  for (Index c = 0; c < C; ++c) p[c] *= inv;
  return m + std::log(s);
}
template <typename Scalar>
Scalar sigmoid(Scalar z) {
  return Scalar(1) / (Scalar(1) + std::exp(-z));
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
void fisher_apply(LikelihoodKind kind, ConstMatMap<Scalar> Z, ConstMatMap<Scalar> U, MatMap<Scalar> HU) {
  const Index C = Z.rows();
  Vec<Scalar> p(C);
  for (Index j = 0; j < Z.cols(); ++j) {
    switch (kind) {
      case LikelihoodKind::categorical: {  // (diag(p) − p pᵀ) u
        softmax(Z.col(j).data(), C, p.data());
        const Scalar pu = p.dot(U.col(j));
        HU.col(j) = p.cwiseProduct(U.col(j)) - pu * p;
        break;
      }
      case LikelihoodKind::gaussian:
        HU.col(j) = U.col(j);
        break;
      case LikelihoodKind::bernoulli:
        for (Index c = 0; c < C; ++c) {
          const Scalar s = sigmoid(Z(c, j));
          HU(c, j) = s * (Scalar(1) - s) * U(c, j);
        }
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
          const double u = rng.uniform(static_cast<uint64_t>(s));
          double cdf = 0;
          Index y = C - 1;
          for (Index c = 0; c < C; ++c) {
            cdf += p[c];
            if (u < cdf) {
              y = c;
              break;
            }
          }
          for (Index c = 0; c < C; ++c) out[c] = -p[c];
          out[y] += Scalar(1);
          break;
        }
        case LikelihoodKind::gaussian:  // y = z + ε; score y − z = ε
          for (Index c = 0; c < C; ++c) out[c] = static_cast<Scalar>(rng.normal(static_cast<uint64_t>(s * C + c)));
          break;
        case LikelihoodKind::bernoulli:  // y_c ~ Bernoulli(σ(z_c)); score y − σ(z)
          for (Index c = 0; c < C; ++c) {
            const Scalar q = sigmoid(z[c]);
            const Scalar y = rng.uniform(static_cast<uint64_t>(s * C + c)) < double(q) ? Scalar(1) : Scalar(0);
            out[c] = y - q;
          }
          break;
      }
    }
  }
}

template <typename Scalar>
Dataset<Scalar> sample_targets(LikelihoodKind kind, ConstMatMap<Scalar> Z, uint64_t seed) {
  const Index C = Z.rows(), N = Z.cols();
  Mat<Scalar> S(C, N);
  sample_scores<Scalar>(kind, Z, seed, 0, 1, MatMap<Scalar>(S.data(), C, N));
  // The score is y − E[y] (onehot(y) − p for categorical), so the label is read back from it.
  Dataset<Scalar> out;
  if (kind == LikelihoodKind::categorical) {
    for (Index j = 0; j < N; ++j) {
      Index y = 0;
      S.col(j).maxCoeff(&y);
      out.labels.push_back(y);
    }
  } else if (kind == LikelihoodKind::gaussian) {
    out.targets = Z + S;
  } else {
    out.targets = S + Z.unaryExpr([](Scalar z) { return sigmoid(z); });
  }
  return out;
}

#define NATGRAD_INSTANTIATE(S)                                                                                   \
  template void check_targets<S>(LikelihoodKind, const Dataset<S>&, Index);                                    \
  template double nll_sum<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index);                        \
  template void nll_gradient<S>(LikelihoodKind, ConstMatMap<S>, const Dataset<S>&, Index, MatMap<S>);          \
  template void fisher_apply<S>(LikelihoodKind, ConstMatMap<S>, ConstMatMap<S>, MatMap<S>);                    \
  template void sample_scores<S>(LikelihoodKind, ConstMatMap<S>, uint64_t, Index, int, MatMap<S>);             \
  template Dataset<S> sample_targets<S>(LikelihoodKind, ConstMatMap<S>, uint64_t);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
