// A separate project using the installed natgrad: builds a FisherOperator and checks its loss against the
// mean cross-entropy computed here by hand from the same parameters.
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/model/initialization.h>

#include <cmath>
#include <iostream>

int main() {
  natgrad::ModelSpec s;
  s.input_shape = {3};
  s.layers = {natgrad::LayerSpec::linear(3, 2)};
  natgrad::Network<double> m(s);
  const natgrad::Vec<double> theta = natgrad::init_parameters(m, 0);
  natgrad::Dataset<double> d;
  d.inputs = natgrad::Mat<double>::Ones(3, 4);
  d.labels = {0, 1, 0, 1};
  natgrad::FisherOperator<double> F(m, theta, natgrad::LikelihoodKind::categorical, d);
  // z_c = Σ_i W[c][i] + b[c] for an all-ones input; loss = mean over samples of log Σ exp z − z_y.
  double z[2];
  for (int c = 0; c < 2; ++c) z[c] = theta[3 * c] + theta[3 * c + 1] + theta[3 * c + 2] + theta[6 + c];
  const double lse = std::log(std::exp(z[0]) + std::exp(z[1]));
  const double expected = ((lse - z[0]) + (lse - z[1])) / 2;
  const bool ok = F.rows() == 8 && std::abs(F.loss() - expected) < 1e-12;
  std::cout << (ok ? "ok" : "MISMATCH") << ": P = " << F.rows() << ", loss " << F.loss() << " vs " << expected << "\n";
  return ok ? 0 : 1;
}
