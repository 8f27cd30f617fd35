// natgrad._core.Optimizer32 / Optimizer64: the library's training optimizers (NaturalGradientOptimizer,
// KfacOptimizer) on a model, one step per call with the GIL released. The settings arrive as a dict whose
// keys are the option structs' field names (NaturalGradientStepOptions, KfacStepOptions; the Fisher's as
// fisher, mc_samples, seed, threads), defaults the structs' own, so a step equals one of `natgrad train`.
#include <natgrad/core/threads.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/training/kfac_optimizer.h>
#include <natgrad/training/optimizer.h>
#include <pybind11/stl.h>

#include <set>
#include <stdexcept>

#include "batch.h"
#include "signal_watch.h"

namespace natgrad {
namespace python {
namespace {

// Takes the settings out of the dict one by one; what is left at the end is a misspelt name.
class Settings {
 public:
  Settings(const py::dict& d, const char* optimizer) : optimizer_(optimizer) {
    for (auto item : d) left_.insert(item.first.cast<std::string>());
    dict_ = d;
  }
  template <typename T>
  void take(const char* key, T& field) {
    if (!dict_.contains(key)) return;
    field = dict_[key].cast<T>();
    left_.erase(key);
  }
  void take_fisher(FisherOptions& f) {
    std::string kind = to_string(f.kind);
    take("fisher", kind);
    f.kind = fisher_kind_from_string(kind);
    take("mc_samples", f.mc_samples);
    take("seed", f.seed);
    take("threads", f.num_threads);
  }
  void finish() const {
    if (left_.empty()) return;
    std::string names;
    for (const auto& n : left_) names += (names.empty() ? "" : ", ") + n;
    throw std::invalid_argument(std::string(optimizer_) + ": unknown setting " + names);
  }

 private:
  const char* optimizer_;
  py::dict dict_;
  std::set<std::string> left_;
};

py::dict step_dict(const StepResult& r, int threads) {
  py::dict d;
  d["loss"] = r.loss;
  d["lr"] = r.lr;
  d["damping"] = r.damping;
  d["damping_after"] = r.damping_after;
  d["cg_iterations"] = r.cg_iterations;
  d["cg_iterate"] = r.cg_iterate;
  d["line_search_trials"] = r.line_search_trials;
  d["rho"] = r.rho;
  d["rejected"] = r.rejected;
  d["solver"] = to_string(r.solver);
  d["threads"] = threads;
  return d;
}

template <typename Scalar>
class Trainer {
 public:
  Trainer(std::shared_ptr<const Model> model, const std::string& kind, const py::dict& settings)
      : model_(std::move(model)), net_(model_->template build<Scalar>()) {
    if (kind == "natgrad") {
      NaturalGradientStepOptions o;
      Settings s(settings, "NaturalGradient");
      take_common(s, o);
      std::string solver = o.solver == SolverKind::automatic ? "auto" : to_string(o.solver);
      s.take("solver", solver);
      o.solver = solver_from_string(solver);
      s.take("gram_max_rows", o.gram_max_rows);
      s.take("cg_tolerance", o.cg_tolerance);
      s.take("cg_max_iterations", o.cg_max_iterations);
      s.take("warm_start", o.warm_start);
      s.take("backtrack", o.backtrack);
      s.take("backtrack_spacing", o.backtrack_spacing);
      s.take("line_search", o.line_search);
      s.take("armijo_c", o.armijo_c);
      s.take("line_search_shrink", o.line_search_shrink);
      s.take("line_search_max_shrinks", o.line_search_max_shrinks);
      s.finish();
      opt_ = std::make_unique<NaturalGradientOptimizer<Scalar>>(net_->num_params(), o);
    } else if (kind == "kfac") {
      KfacStepOptions o;
      Settings s(settings, "KFAC");
      take_common(s, o);
      s.take("factor_every", o.factor_every);
      s.take("inverse_every", o.inverse_every);
      s.take("damping_every", o.damping_every);
      s.take("factor_decay", o.factor_decay);
      s.take("min_damping", o.min_damping);
      s.finish();
      opt_ = std::make_unique<KfacOptimizer<Scalar>>(*net_, o);
    } else {
      throw std::invalid_argument("unknown optimizer \"" + kind + "\": natgrad or kfac");
    }
  }

  // Step k from the parameters given: (the parameters after it, float64, and what the step did).
  py::tuple step(const Array<double>& parameters, const py::array& inputs, const py::array& targets,
                 Index k) {
    Vec<Scalar> theta = make_parameters<Scalar>(*model_, parameters);
    const Dataset<Scalar> batch = make_batch<Scalar>(*model_, inputs, targets);
    StepResult r;
    const int threads = resolve_threads(threads_);  // (what the step's Fisher resolves its count to)
    {
      py::gil_scoped_release nogil;
      watch_.arm();
      net_->check_inputs(batch.inputs);
      r = opt_->step(*net_, model_->file.likelihood, theta, batch, k);
    }
    Vec<double> out = theta.template cast<double>();
    return py::make_tuple(to_array(std::move(out)), step_dict(r, threads));
  }

  py::dict state() const {
    const OptimizerState s = opt_->state();
    py::dict vectors, scalars;
    for (const auto& v : s.vectors) vectors[v.first.c_str()] = to_array(v.second);
    for (const auto& x : s.scalars) scalars[x.first.c_str()] = x.second;
    py::dict d;
    d["vectors"] = vectors;
    d["scalars"] = scalars;
    return d;
  }

  void load_state(const py::dict& d) {
    OptimizerState s;
    for (auto item : d["vectors"].cast<py::dict>()) {
      const auto v = item.second.cast<Array<double>>();
      s.vectors.emplace_back(item.first.cast<std::string>(), ConstVecMap<double>(v.data(), v.size()));
    }
    for (auto item : d["scalars"].cast<py::dict>())
      s.scalars.emplace_back(item.first.cast<std::string>(), item.second.cast<double>());
    opt_->load_state(s);
  }

 private:
  // The settings both optimizers have (the same names in NaturalGradientStepOptions and KfacStepOptions), and
  // the Fisher's; a stop request is this optimizer's Ctrl-C watch.
  template <typename Options>
  void take_common(Settings& s, Options& o) {
    s.take("lr", o.lr);
    s.take("damping", o.damping);
    s.take("adapt_damping", o.adapt_damping);
    s.take("curvature_batch", o.curvature_batch);
    s.take("momentum", o.momentum);
    s.take_fisher(o.fisher);
    threads_ = o.fisher.num_threads;
    SignalWatch* watch = &watch_;
    o.fisher.stop_requested = [watch] { return watch->stop_requested(); };
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Network<Scalar>> net_;
  SignalWatch watch_;
  int threads_ = 0;  ///< the threads setting (0: natgrad's library-wide count at each step)
  std::unique_ptr<Optimizer<Scalar>> opt_;
};

template <typename Scalar>
void bind_one(py::module_& m, const char* name) {
  py::class_<Trainer<Scalar>>(m, name)
      .def(py::init<std::shared_ptr<const Model>, const std::string&, const py::dict&>(), py::arg("model"),
           py::arg("kind"), py::arg("settings"))
      .def("step", &Trainer<Scalar>::step, py::arg("parameters"), py::arg("inputs"), py::arg("targets"),
           py::arg("k"))
      .def("state", &Trainer<Scalar>::state)
      .def("load_state", &Trainer<Scalar>::load_state, py::arg("state"));
}

}  // namespace

void bind_optimizers(py::module_& m) {
  bind_one<float>(m, "Optimizer32");
  bind_one<double>(m, "Optimizer64");
}

}  // namespace python
}  // namespace natgrad
