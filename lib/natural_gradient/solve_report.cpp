#include "natural_gradient/solve_report.h"

namespace natgrad {
namespace {

nlohmann::ordered_json cg_json(const CgSummary& cg, Index deflated) {
  return nlohmann::ordered_json{
      {"iterations", cg.iterations},
      {"converged", cg.is_converged()},
      {"termination", cg.termination == CgTermination::user_stop ? "interrupted" : to_string(cg.termination)},
      {"message", cg.message},
      {"relative_residual", cg.relative_residual},
      {"recursive_relative_residual", cg.recursive_relative_residual},
      {"residual_replacements", cg.restarts},
      {"breakdown", to_string(cg.breakdown)},
      {"products", cg.operator_applications},
      {"deflated_eigenpairs", deflated},
      {"returned_iterate", cg.returned_iterate},
      {"residual_history", cg.residual_history}};
}

}  // namespace

template <typename Scalar>
nlohmann::ordered_json solve_report(const NaturalGradientResult<Scalar>& r, const SolveReportSetting& s) {
  nlohmann::ordered_json j;
  j["command"] = "solve";
  j["loss"] = r.loss;
  j["gradient_norm"] = r.gradient_norm;
  j["params"] = s.params;
  j["samples"] = r.samples;
  j["positions"] = s.positions;
  j["curvature_samples"] = r.curvature_samples;
  j["fisher"] = s.fisher;
  j["damping"] = s.damping;
  j["preconditioner"] = s.preconditioner;
  j["dtype"] = s.dtype;
  j["threads"] = s.threads;
  j["ranks"] = s.ranks;
  j["solver"] = to_string(r.solver);
  if (!r.solver_reason.empty()) j["solver_reason"] = r.solver_reason;
  if (r.solver == SolverKind::smw)
    j["gram"] = {{"rows", r.gram_rows},
                 {"form", r.gram_push_through ? "push-through" : "woodbury"},
                 {"form_s", r.time_gram_form_s},
                 {"factor_s", r.time_gram_factor_s},
                 {"apply_s", r.time_gram_apply_s},
                 {"true_relative_residual", r.cg.relative_residual}};
  j["cg"] = cg_json(r.cg, r.deflated);
  if (!r.solves.empty()) {  // several dampings: each its own entry; "cg" above is the smallest's
    j["multi_shift_products"] = r.multi_shift_products;
    j["solves"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < r.solves.size(); ++i) {
      nlohmann::ordered_json e{{"damping", r.solves[i].damping}, {"cg", cg_json(r.solves[i].cg, r.deflated)}};
      if (i < s.solve_extras.size()) e.update(s.solve_extras[i]);
      j["solves"].push_back(e);
    }
  }
  j.update(s.extras);
  j["timing_s"] = {{"forward", r.time_forward_s},
                   {"gradient", r.time_gradient_s},
                   {"cg", r.time_cg_s},
                   {"spectrum", r.time_spectrum_s},
                   {"total", r.time_total_s}};
  if (!r.compare.empty()) j["timing_s"]["compare"] = r.time_compare_s;
  return j;
}

template nlohmann::ordered_json solve_report(const NaturalGradientResult<float>&, const SolveReportSetting&);
template nlohmann::ordered_json solve_report(const NaturalGradientResult<double>&, const SolveReportSetting&);

}  // namespace natgrad
