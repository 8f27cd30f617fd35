// Shared test utilities: small models, tolerances per scalar type, and the dense references
// (Jacobian from backprop, R-op or finite differences of the forward pass, H_n from the likelihood formulas
// and independently drawn Monte-Carlo labels, F = 1/N Σ J_nᵀ H_n J_n).
#pragma once

#include <gtest/gtest.h>
#include <natgrad/core/interrupted.h>
#include <natgrad/core/random.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/likelihood/likelihood.h>
#include <natgrad/model/initialization.h>
#include <natgrad/model/network.h>

#include <Eigen/Cholesky>
#include <Eigen/QR>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace natgrad {
namespace test {

template <typename Scalar>
struct Tol;
template <>
struct Tol<double> {
  static constexpr double fd = 1e-6;        // finite differences, relative
  static constexpr double adjoint = 1e-12;  // ⟨u, Jv⟩ = ⟨Jᵀu, v⟩, relative
  static constexpr double dense = 1e-10;    // against a dense reference, relative
  static constexpr double fd_step = 1e-5;
};
template <>
struct Tol<float> {
  static constexpr double fd = 2e-2;
  static constexpr double adjoint = 1e-5;
  static constexpr double dense = 1e-4;
  static constexpr double fd_step = 1e-2;
};

/// A fresh directory under /tmp (one per call), e.g. make_temp_dir("natgrad_io").
inline std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "_XXXXXX";
  return std::string(mkdtemp(tmpl.data()));
}

/// The file `name` in this test process's temporary directory (one, made on first use).
inline std::string path(const std::string& name) {
  static const std::string dir = make_temp_dir("natgrad_test");
  return dir + "/" + name;
}

/// Writes `bytes` to the file p, replacing it.
inline void write_bytes(const std::string& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

/// The whole file p ("" if it cannot be read).
inline std::string read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A safetensors image written by hand: the header's length (8 bytes, little-endian), the JSON header, the data.
inline std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(char((uint64_t(header.size()) >> (8 * i)) & 0xff));
  return out + header + data;
}

/// An IDX image written by hand: the magic 0, 0, 8 (unsigned bytes) and the number of dimensions, each
/// dimension as 4 bytes big-endian, then the data.
inline std::string idx_bytes(const std::vector<uint32_t>& dims, const std::string& data) {
  std::string s{0, 0, 8, char(dims.size())};
  for (uint32_t d : dims) s += {char(d >> 24), char(d >> 16), char(d >> 8), char(d)};
  return s + data;
}

/// The message of the std::invalid_argument f throws, or "no exception".
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

#define EXPECT_ERROR(expr, text)                                                \
  do {                                                                          \
    const std::string msg_ = ::natgrad::test::error_of([&] { (void)(expr); });  \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_;       \
  } while (0)

inline double rel_err(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }
template <typename A, typename B>
double rel_err_vec(const A& a, const B& b) {
  const double d = (a.template cast<double>() - b.template cast<double>()).norm();
  return d / std::max({a.template cast<double>().norm(), b.template cast<double>().norm(), 1e-300});
}

/// Reproducible "random" matrix with entries uniform in [lo, hi).
template <typename Scalar>
Mat<Scalar> random_mat(Index rows, Index cols, uint64_t seed, double lo = -1, double hi = 1) {
  const CounterRng rng(seed, 99);
  Mat<Scalar> m(rows, cols);
  for (Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<Scalar>(lo + (hi - lo) * rng.uniform(k));
  return m;
}
template <typename Scalar>
Vec<Scalar> random_vec(Index n, uint64_t seed) {
  return random_mat<Scalar>(n, 1, seed);
}

inline ModelSpec mlp_spec(Index in, Index hidden, Index out, LayerType act = LayerType::tanh) {
  ModelSpec s;
  s.input_shape = {in};
  s.layers = {LayerSpec::linear(in, hidden), LayerSpec::activation(act), LayerSpec::linear(hidden, hidden, false),
              LayerSpec::activation(act), LayerSpec::linear(hidden, out)};
  return s;
}

inline ModelSpec cnn_spec(Index out) {
  ModelSpec s;
  s.input_shape = {2, 6, 6};
  s.layers = {LayerSpec::conv2d(2, 3, 3, 1, 1), LayerSpec::activation(LayerType::tanh), LayerSpec::maxpool2d(2),
              LayerSpec::conv2d(3, 4, 2, 1, 0, false), LayerSpec::activation(LayerType::gelu), LayerSpec::flatten(),
              LayerSpec::linear(4 * 2 * 2, out)};
  return s;
}

/// A small ResNet graph: stem conv + batch norm + relu, a basic block with an identity shortcut and a strided
/// one with a 1×1 conv + batch norm shortcut (residual adds: values read by two nodes), global average pool,
/// linear. Batch norm buffers at PyTorch's defaults.
inline ModelSpec resnet_spec(Index C, Index width = 8, Index side = 12) {
  ModelSpec m;
  m.input_shape = {1, side, side};
  auto node = [&](LayerSpec l, const std::string& id, std::vector<std::string> in) {
    l.node(id, std::move(in));
    l.name = id;
    m.layers.push_back(l);
  };
  node(LayerSpec::conv2d(1, width, 3, 1, 1, false), "stem", {"input"});
  node(LayerSpec::batch_norm(width), "bn0", {"stem"});
  node(LayerSpec::activation(LayerType::relu), "r0", {"bn0"});
  node(LayerSpec::conv2d(width, width, 3, 1, 1, false), "a1", {"r0"});
  node(LayerSpec::batch_norm(width), "abn1", {"a1"});
  node(LayerSpec::activation(LayerType::relu), "ar1", {"abn1"});
  node(LayerSpec::conv2d(width, width, 3, 1, 1, false), "a2", {"ar1"});
  node(LayerSpec::batch_norm(width), "abn2", {"a2"});
  node(LayerSpec::add({"abn2", "r0"}), "aadd", {});
  node(LayerSpec::activation(LayerType::relu), "ar2", {"aadd"});
  node(LayerSpec::conv2d(width, 2 * width, 3, 2, 1, false), "b1", {"ar2"});
  node(LayerSpec::batch_norm(2 * width), "bbn1", {"b1"});
  node(LayerSpec::activation(LayerType::relu), "br1", {"bbn1"});
  node(LayerSpec::conv2d(2 * width, 2 * width, 3, 1, 1, false), "b2", {"br1"});
  node(LayerSpec::batch_norm(2 * width), "bbn2", {"b2"});
  node(LayerSpec::conv2d(width, 2 * width, 1, 2, 0, false), "bsc", {"ar2"});
  node(LayerSpec::batch_norm(2 * width), "bscbn", {"bsc"});
  node(LayerSpec::add({"bbn2", "bscbn"}), "badd", {});
  node(LayerSpec::activation(LayerType::relu), "br2", {"badd"});
  node(LayerSpec::global_avgpool(), "gap", {"br2"});
  node(LayerSpec::linear(2 * width, C), "fc", {"gap"});
  return m;
}

/// Targets of the right kind for C outputs and N samples.
template <typename Scalar>
void fill_targets(Dataset<Scalar>& d, LikelihoodKind kind, Index C, uint64_t seed) {
  const Index N = d.size();
  const CounterRng rng(seed, 7);
  if (kind == LikelihoodKind::categorical) {
    d.labels.resize(static_cast<std::size_t>(N));
    for (Index n = 0; n < N; ++n) d.labels[static_cast<std::size_t>(n)] = static_cast<int64_t>(rng.bits(n) % C);
  } else if (kind == LikelihoodKind::gaussian) {
    d.targets = random_mat<Scalar>(C, N, seed + 1);
  } else {
    d.targets = random_mat<Scalar>(C, N, seed + 1, 0, 1).array().round().matrix();
  }
}

template <typename Scalar>
Dataset<Scalar> random_dataset(const Network<Scalar>& model, Index N, LikelihoodKind kind, uint64_t seed) {
  Dataset<Scalar> d;
  d.inputs = random_mat<Scalar>(model.input_size(), N, seed);
  fill_targets(d, kind, model.output_size(), seed);
  return d;
}

/// The full Jacobian of all outputs (C·N × P, row n·C + c is ∂z_{c,n}/∂θ), each row by one backprop.
template <typename Scalar>
Mat<Scalar> jacobian_by_backprop(const Network<Scalar>& model, const Vec<Scalar>& theta, const Mat<Scalar>& X) {
  const Index C = model.output_size(), N = X.cols(), P = model.num_params();
  auto cache = model.make_cache(X);
  model.forward(theta.data(), cache, 0, N);
  auto ws = model.make_workspace(1);
  Mat<Scalar> J(C * N, P);
  Vec<Scalar> e(C), row(P);
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c) {
      e.setZero();
      e[c] = 1;
      row.setZero();
      model.vjp(theta.data(), cache, n, 1, ConstMatMap<Scalar>(e.data(), C, 1), row.data(), ws);
      J.row(n * C + c) = row.transpose();
    }
  return J;
}

/// The same Jacobian, each column by one R-op (forward-mode) pass with a unit parameter tangent.
template <typename Scalar>
Mat<Scalar> jacobian_by_rop(const Network<Scalar>& model, const Vec<Scalar>& theta, const Mat<Scalar>& X) {
  const Index C = model.output_size(), N = X.cols(), P = model.num_params();
  auto cache = model.make_cache(X);
  model.forward(theta.data(), cache, 0, N);
  auto ws = model.make_workspace(N);
  Mat<Scalar> J(C * N, P);
  Vec<Scalar> e = Vec<Scalar>::Zero(P);
  for (Index p = 0; p < P; ++p) {
    e[p] = 1;
    model.jvp(theta.data(), e.data(), cache, 0, N, ws);
    J.col(p) = ConstVecMap<Scalar>(ws.result(), C * N);
    e[p] = 0;
  }
  return J;
}

/// The Jacobian (C·N × P) by central finite differences of the forward pass alone, in double: independent of
/// the library's R-op and backprop. Step h = 1e-6 gives O(h²) ≈ 1e-12 truncation plus 1e-10 rounding.
inline Mat<double> jacobian_by_finite_differences(const Network<double>& model, const Vec<double>& theta,
                                                  const Mat<double>& X, double h = 1e-6) {
  const Index C = model.output_size(), N = X.cols(), P = model.num_params();
  Mat<double> J(C * N, P);
  Vec<double> t = theta;
  for (Index p = 0; p < P; ++p) {
    t[p] = theta[p] + h;
    const Mat<double> up = model.predict(t.data(), X);
    t[p] = theta[p] - h;
    const Mat<double> down = model.predict(t.data(), X);
    t[p] = theta[p];
    J.col(p) = Eigen::Map<const Vec<double>>(Mat<double>((up - down) / (2 * h)).data(), C * N);
  }
  return J;
}

/// The Monte-Carlo H_n = 1/S Σ_s s_s s_sᵀ with the labels drawn here from the documented key — stream
/// (mc_labels, sample n) of the counter-based generator, draw s — by the documented rules: categorical
/// y = the first class whose cumulative probability exceeds u·Σp (u = uniform(s)); gaussian y = z + ε with
/// ε_c = normal(s·C + c); bernoulli y_c = [uniform(s·C + c) < σ(z_c)]. Nothing here calls the library's
/// sampler.
inline Mat<double> mc_output_fisher(LikelihoodKind kind, const Vec<double>& z, uint64_t seed, Index n, int S) {
  const Index C = z.size();
  const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(n)));
  Mat<double> H = Mat<double>::Zero(C, C);
  Vec<double> p = (z.array() - z.maxCoeff()).exp();
  p /= p.sum();
  const Vec<double> sig = 1.0 / (1.0 + (-z.array()).exp());
  for (int s = 0; s < S; ++s) {
    Vec<double> score(C);
    if (kind == LikelihoodKind::categorical) {
      const double target = rng.uniform(static_cast<uint64_t>(s)) * p.sum();
      Index y = C - 1;
      double cdf = 0;
      for (Index c = 0; c < C; ++c)
        if (target < (cdf += p[c])) {
          y = c;
          break;
        }
      score = -p;
      score[y] += 1;
    } else if (kind == LikelihoodKind::gaussian) {
      for (Index c = 0; c < C; ++c) score[c] = rng.normal(static_cast<uint64_t>(s * C + c));
    } else {
      for (Index c = 0; c < C; ++c)
        score[c] = (rng.uniform(static_cast<uint64_t>(s * C + c)) < sig[c] ? 1.0 : 0.0) - sig[c];
    }
    H += score * score.transpose();
  }
  return H / double(S);
}

/// H_n written out from the table in docs/math.md (not from the library's code path).
template <typename Scalar>
Mat<double> dense_output_fisher(LikelihoodKind kind, FisherKind fk, const Vec<Scalar>& z_in,
                                const Dataset<Scalar>& data, Index n) {
  const Vec<double> z = z_in.template cast<double>();
  const Index C = z.size();
  if (fk == FisherKind::empirical) {
    Vec<double> s(C);
    if (kind == LikelihoodKind::categorical) {
      s = (z.array() - z.maxCoeff()).exp();
      s /= s.sum();
      s[data.labels[static_cast<std::size_t>(n)]] -= 1;
    } else if (kind == LikelihoodKind::gaussian) {
      s = z - data.targets.col(n).template cast<double>();
    } else {
      s = (1.0 / (1.0 + (-z.array()).exp())).matrix() - data.targets.col(n).template cast<double>();
    }
    return s * s.transpose();
  }
  if (kind == LikelihoodKind::categorical) {
    Vec<double> p = (z.array() - z.maxCoeff()).exp();
    p /= p.sum();
    return Mat<double>(p.asDiagonal()) - p * p.transpose();
  }
  if (kind == LikelihoodKind::gaussian) return Mat<double>::Identity(C, C);
  Vec<double> s = 1.0 / (1.0 + (-z.array()).exp());
  return Mat<double>((s.array() * (1 - s.array())).matrix().asDiagonal());
}

/// F = 1/N Σ_n J_nᵀ H_n J_n in double, from the backprop Jacobian and the formula H_n.
template <typename Scalar>
Mat<double> dense_fisher(const Network<Scalar>& model, const Vec<Scalar>& theta, const Dataset<Scalar>& data,
                         LikelihoodKind kind, FisherKind fk) {
  const Index C = model.output_size(), N = data.size(), P = model.num_params();
  const Mat<double> J = jacobian_by_backprop(model, theta, data.inputs).template cast<double>();
  const Mat<Scalar> Z = model.predict(theta.data(), data.inputs);
  Mat<double> F = Mat<double>::Zero(P, P);
  for (Index n = 0; n < N; ++n) {
    const Mat<double> Jn = J.middleRows(n * C, C);
    const Vec<Scalar> zn = Z.col(n);
    F.noalias() += Jn.transpose() * dense_output_fisher(kind, fk, zn, data, n) * Jn;
  }
  return F / static_cast<double>(N);
}

/// The mean categorical negative log-likelihood 1/N Σ_n (log Σ_c exp z_cn − z_{y_n, n}) of outputs Z (C × N),
/// from the formula (not the library's nll_sum).
inline double categorical_nll(const Mat<double>& Z, const std::vector<int64_t>& labels) {
  double sum = 0;
  for (Index n = 0; n < Z.cols(); ++n) {
    const double m = Z.col(n).maxCoeff();
    sum += m + std::log((Z.col(n).array() - m).exp().sum()) - Z(labels[static_cast<std::size_t>(n)], n);
  }
  return sum / double(Z.cols());
}

/// ∇ loss(θ) by central differences of `loss` alone (step 1e-6, in double).
template <typename Loss>
Vec<double> gradient_by_finite_differences(Loss loss, const Vec<double>& theta) {
  Vec<double> fd(theta.size());
  for (Index p = 0; p < theta.size(); ++p) {
    Vec<double> up = theta, down = theta;
    up[p] += 1e-6;
    down[p] -= 1e-6;
    fd[p] = (loss(up) - loss(down)) / 2e-6;
  }
  return fd;
}

/// H_n of a per-position likelihood (output [T, C] per sample) written out from the formulas: block-diagonal
/// per position (exact), the stacked-score outer product s sᵀ (empirical), or 1/S Σ s sᵀ of labels drawn
/// independently per position from the documented generator key (seed, sample n, counter s·T + t)
/// (Monte-Carlo).
inline Mat<double> per_position_fisher(LikelihoodKind lk, FisherKind fk, const Vec<double>& z, const Dataset<double>& data,
                                Index n, Index T, uint64_t seed, int S) {
  const Index C = z.size() / T;
  Mat<double> H = Mat<double>::Zero(T * C, T * C);
  auto softmax = [&](Index t) {
    Vec<double> p = z.segment(t * C, C).array().exp();
    return Vec<double>(p / p.sum());
  };
  auto sigma = [&](Index t) { return Vec<double>((1.0 / (1.0 + (-z.segment(t * C, C).array()).exp())).matrix()); };
  if (fk == FisherKind::exact) {
    for (Index t = 0; t < T; ++t) {
      auto block = H.block(t * C, t * C, C, C);
      if (lk == LikelihoodKind::categorical) {
        const Vec<double> p = softmax(t);
        block = Mat<double>(p.asDiagonal()) - p * p.transpose();
      } else if (lk == LikelihoodKind::gaussian) {
        block.setIdentity();
      } else {
        const Vec<double> q = sigma(t);
        block = Mat<double>((q.array() * (1 - q.array())).matrix().asDiagonal());
      }
    }
    return H;
  }
  const CounterRng rng(seed, rng_stream(RngDomain::mc_labels, static_cast<uint64_t>(n)));
  const int draws = fk == FisherKind::empirical ? 1 : S;
  for (int s = 0; s < draws; ++s) {
    Vec<double> score(T * C);
    for (Index t = 0; t < T; ++t) {
      const uint64_t d = uint64_t(s) * uint64_t(T) + uint64_t(t);
      auto out = score.segment(t * C, C);
      if (lk == LikelihoodKind::categorical) {
        const Vec<double> p = softmax(t);
        Index y = data.labels[static_cast<std::size_t>(n * T + t)];
        if (fk == FisherKind::mc) {  // the first class whose cumulative probability exceeds u·Σp
          const double u = rng.uniform(d) * p.sum();
          double cdf = 0;
          for (y = 0; y < C - 1; ++y)
            if (u < (cdf += p[y])) break;
        }
        out = -p;
        out[y] += 1;
      } else if (lk == LikelihoodKind::gaussian) {
        for (Index c = 0; c < C; ++c)
          out[c] = fk == FisherKind::mc ? rng.normal(d * uint64_t(C) + uint64_t(c)) : z[t * C + c] - data.targets(t * C + c, n);
      } else {
        const Vec<double> q = sigma(t);
        for (Index c = 0; c < C; ++c) {
          const double y = fk == FisherKind::mc ? (rng.uniform(d * uint64_t(C) + uint64_t(c)) < q[c] ? 1.0 : 0.0)
                                                : data.targets(t * C + c, n);
          out[c] = y - q[c];
        }
      }
    }
    H += score * score.transpose() / double(draws);
  }
  return H;
}

template <typename Scalar>
Vec<Scalar> apply(const FisherOperator<Scalar>& F, const Vec<Scalar>& v) {
  Vec<Scalar> y(F.rows());
  F.perform_op(v.data(), y.data());
  return y;
}

/// A dense symmetric matrix as an operator (test-only), counting its products.
template <typename S>
struct DenseOp {
  using Scalar = S;
  Mat<S> A;
  mutable Index calls = 0;
  Index rows() const { return A.rows(); }
  Index cols() const { return A.cols(); }
  void perform_op(const S* x, S* y) const {
    VecMap<S>(y, A.rows()).noalias() = A * ConstVecMap<S>(x, A.cols());
    ++calls;
  }
};

/// F's product through x and y one and three floats past Eigen's alignment against the aligned product, bit
/// for bit (a caller's vectors may start anywhere: NumPy's, a slice).
inline void expect_product_ignores_alignment(const FisherOperator<float>& F, uint64_t seed) {
  const Index P = F.cols();
  const Vec<float> v = random_vec<float>(P, seed);
  Vec<float> aligned(P);
  F.perform_op(v.data(), aligned.data());
  for (Index shift : {1, 3}) {
    Vec<float> xs(P + 4), ys(P + 4);
    xs.segment(shift, P) = v;
    F.perform_op(xs.data() + shift, ys.data() + shift);
    EXPECT_EQ(Vec<float>(ys.segment(shift, P)), aligned) << "shift " << shift;
  }
}

/// A dense symmetric matrix as an operator whose `throw_at`-th product (1-based) and every later one throw
/// natgrad::Interrupted, as a FisherOperator's do once a stop was requested.
struct InterruptedAt {
  using Scalar = double;
  Mat<double> A;
  Index throw_at = 0;
  mutable Index calls = 0;
  Index rows() const { return A.rows(); }
  Index cols() const { return A.cols(); }
  void perform_op(const double* x, double* y) const {
    if (++calls >= throw_at) throw Interrupted("the product was interrupted");
    VecMap<double>(y, A.rows()).noalias() = A * ConstVecMap<double>(x, A.cols());
  }
};

/// What CG's k-th iterate from x₀ = 0 is, formed densely: the minimizer of φ(x) = ½xᵀAx − bᵀx over the
/// Krylov space span{b, Ab, …, A^{k−1}b} (A symmetric positive definite), x = Q (QᵀAQ)⁻¹ Qᵀb with Q an
/// orthonormal basis of it. k = 0 gives 0.
inline Vec<double> krylov_minimizer(const Mat<double>& A, const Vec<double>& b, Index k) {
  if (k == 0) return Vec<double>::Zero(b.size());
  Mat<double> K(b.size(), k);
  K.col(0) = b;
  for (Index j = 1; j < k; ++j) K.col(j) = A * K.col(j - 1);
  const Mat<double> Q =
      Eigen::HouseholderQR<Mat<double>>(K).householderQ() * Mat<double>::Identity(b.size(), k);
  return Q * (Q.transpose() * A * Q).ldlt().solve(Q.transpose() * b);
}

}  // namespace test
}  // namespace natgrad
