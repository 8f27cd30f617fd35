#include <natgrad/natural_gradient/damped_condition.h>

#include <cmath>

namespace natgrad {

template <typename Scalar>
ConditionEstimate damped_condition_number(const FisherOperator<Scalar>& F, double damping, double known_lambda_max) {
  const Network<Scalar>& model = F.model();
  const Index C = model.output_size();
  const bool shift_null = F.likelihood() == LikelihoodKind::categorical && model.num_layers() > 0 &&
                          model.layer(model.num_layers() - 1).type() == LayerType::linear;
  // rank F ≤ M·C over the M positions that count (N·T less the ignored ones) of C / T outputs each.
  const Index rank_bound = F.counted_positions() * (C / model.output_positions());
  ConditionEstimate c = condition_number(F, shift_null ? 0 : rank_bound, 1e-10, 300, known_lambda_max);
  if (shift_null && c.kind == ConditionMethod::rank_bound)
    c.method = "softmax shift invariance: the final linear layer's common-logit directions are in F's null space";
  c.lambda_max += damping;
  c.lambda_min += damping;
  if (c.kind == ConditionMethod::failed && std::isfinite(c.lambda_max) && damping > 0) {
    // λ_min(F + λI) ≥ λ always, so (λ_max + λ)/λ bounds the condition number from above.
    c.lambda_min = damping;
    c.method += "; reporting the upper bound (lambda_max + damping) / damping";
  }
  c.condition_number = c.lambda_min > 0 ? c.lambda_max / c.lambda_min : std::numeric_limits<double>::infinity();
  return c;
}

template ConditionEstimate damped_condition_number<float>(const FisherOperator<float>&, double, double);
template ConditionEstimate damped_condition_number<double>(const FisherOperator<double>&, double, double);

}  // namespace natgrad
