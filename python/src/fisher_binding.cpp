// natgrad._core.Fisher32 / Fisher64: one batch bound to a model at given parameters, the library's
// FisherOperator over it (the forward pass cached at construction), with its loss, gradient, products, solves
// and top eigenvalues. Arrays arrive as C-ordered NumPy arrays of the Fisher's scalar (the package converts);
// every computation runs with the GIL released, and a Ctrl-C seen between chunks of work stops it as a
// KeyboardInterrupt (natgrad::Interrupted, see module.cpp).
#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/curvature/kfac.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/slq_density.h>
#include <natgrad/solvers/top_eigenvalues.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>

#include "batch.h"
#include "natural_gradient/solve_report.h"  // (lib/, private: the report natgrad solve --report writes)
#include "signal_watch.h"

namespace natgrad {
namespace python {
namespace {

template <typename Scalar>
class Fisher {
 public:
  Fisher(std::shared_ptr<const Model> model, const Array<double>& parameters, const py::array& inputs,
         const py::array& targets, const std::string& kind, int mc_samples, uint64_t seed, int threads)
      : model_(std::move(model)), watch_(std::make_unique<SignalWatch>()) {
    data_ = make_batch<Scalar>(*model_, inputs, targets);
    Vec<Scalar> theta = make_parameters<Scalar>(*model_, parameters);
    options_.kind = fisher_kind_from_string(kind);
    options_.mc_samples = mc_samples;
    options_.seed = seed;
    options_.num_threads = threads;
    SignalWatch* watch = watch_.get();
    options_.stop_requested = [watch] { return watch->stop_requested(); };
    std::string why;
    if (!options_.is_valid(&why)) throw std::invalid_argument(why);
    py::gil_scoped_release nogil;
    watch_->arm();
    net_ = model_->template build<Scalar>();
    net_->check_inputs(data_.inputs);
    op_ = std::make_unique<FisherOperator<Scalar>>(*net_, std::move(theta), model_->file.likelihood, data_,
                                                   options_);
    data_.inputs.resize(0, 0);  // the operator keeps them (its cached forward pass)
    if (!op_->forward_error().empty()) throw std::runtime_error(op_->forward_error());
  }

  Index num_params() const { return op_->cols(); }
  Index num_samples() const { return op_->num_samples(); }
  double loss() const { return op_->loss(); }

  py::array_t<Scalar> gradient() {
    const Vec<Scalar>* g = nullptr;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      g = &op_->gradient();
    }
    return to_array(*g);
  }

  // y = F v (no damping), v one flat vector of num_params() entries.
  py::array_t<Scalar> matvec(const Array<Scalar>& v) {
    check_vector(v);
    // From and into NumPy's storage: perform_op copies vectors off Eigen's alignment through its own (NumPy's
    // usually are), so a product's bits do not depend on where they lie.
    py::array_t<Scalar> y(num_params());
    Scalar* out = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      op_->perform_op(v.data(), out);
    }
    return y;
  }

  // (F + λI) d = g for every damping given (several: one multi-shift CG), by the library's
  // solve_natural_gradient on this batch; the directions in the order of the dampings, and the report.
  py::tuple solve(const std::vector<double>& dampings, double tol, Index max_iters,
                  const std::string& solver) {
    if (dampings.empty()) throw std::invalid_argument("give a damping (or a list of them)");
    NaturalGradientOptions opt;
    opt.solver = solver_from_string(solver);
    opt.fisher = options_;
    if (dampings.size() == 1)
      opt.fisher.damping = dampings[0];
    else
      opt.dampings = dampings;
    opt.cg.relative_tolerance = tol;
    opt.cg.max_iterations = max_iters;
    NaturalGradientResult<Scalar> r;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      Dataset<Scalar> batch = op_->targets();
      batch.inputs = op_->forward_cache().acts[0];
      r = solve_natural_gradient(*net_, op_->parameters(), op_->likelihood(), batch, opt);
    }
    if (watch_->stopped()) throw Interrupted("the solve was interrupted (Ctrl-C)");
    if (!r.ok()) throw std::runtime_error(r.failure);
    py::list directions;
    if (r.solves.empty())
      directions.append(to_array(std::move(r.direction)));
    else
      for (auto& d : r.solves) directions.append(to_array(std::move(d.direction)));
    SolveReportSetting setting;
    setting.params = num_params();
    setting.positions = net_->output_positions();
    setting.fisher = to_string(options_.kind);
    setting.damping = *std::min_element(dampings.begin(), dampings.end());
    setting.dtype = sizeof(Scalar) == sizeof(double) ? "float64" : "float32";
    setting.threads = resolve_threads(options_.num_threads);
    const py::object report = py::module_::import("json").attr("loads")(solve_report(r, setting).dump());
    return py::make_tuple(directions, report);
  }

  // The k largest eigenvalues of F (descending) by the library's Lanczos, with the eigenvectors (P × k) if
  // asked.
  py::tuple eigenvalues(Index k, bool vectors) {
    SpectrumOptions so;
    so.num_eigenvalues = k;
    so.tolerance = 1e-10;
    so.basis = LanczosBasis::double_precision;
    so.compute_eigenvectors = vectors;
    SpectrumResult r;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      r = top_eigenvalues(*op_, so);
    }
    if (watch_->stopped()) throw Interrupted("the eigenvalues were interrupted (Ctrl-C)");
    if (!r.converged) throw std::runtime_error("the top-" + std::to_string(k) + " eigenvalues: " + r.status);
    py::array_t<double> values(r.eigenvalues.size(), r.eigenvalues.data());
    if (!vectors) return py::make_tuple(values, py::none());
    // Column-major P × k, returned as a C-ordered [k, P] array: row i is eigenvector i.
    py::array_t<double> vecs({r.eigenvectors.cols(), r.eigenvectors.rows()});
    std::copy(r.eigenvectors.data(), r.eigenvectors.data() + r.eigenvectors.size(), vecs.mutable_data());
    return py::make_tuple(values, vecs);
  }

  // Hutchinson's estimate of tr F from `probes` Rademacher probes keyed by (seed, probe): (estimate, standard
  // error).
  py::tuple trace(Index probes, uint64_t seed) {
    TraceEstimate t;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      t = hutchinson_trace(*op_, probes, seed);
    }
    if (watch_->stopped() || t.interrupted) throw Interrupted("the trace was interrupted (Ctrl-C)");
    return py::make_tuple(t.trace, t.standard_error);
  }

  // The spectral density of F by stochastic Lanczos quadrature: the Ritz values (nodes) and weights of every
  // probe, and the density smoothed on a grid.
  py::dict density(Index steps, Index probes, uint64_t seed, Index grid_points, double sigma) {
    SpectralDensity d;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      d = slq_density(*op_, steps, probes, seed, grid_points, sigma);
    }
    if (watch_->stopped() || d.interrupted) throw Interrupted("the density was interrupted (Ctrl-C)");
    py::dict out;
    out["nodes"] = py::array_t<double>(d.nodes.size(), d.nodes.data());
    out["weights"] = py::array_t<double>(d.weights.size(), d.weights.data());
    out["grid"] = py::array_t<double>(d.grid.size(), d.grid.data());
    out["density"] = py::array_t<double>(d.density.size(), d.density.data());
    out["sigma"] = d.sigma;
    out["matvecs"] = d.matvecs;
    return out;
  }

  // K-FAC's approximation of this F (curvature/kfac.h), built on first use: y = F̂ v undamped, or with
  // damping λ ≥ 0 the π-split damped inverse z = F̂_λ⁻¹ v.
  py::array_t<Scalar> kfac(const Array<Scalar>& v, bool inverse, double damping) {
    check_vector(v);
    Vec<Scalar> x = ConstVecMap<Scalar>(v.data(), num_params()), y(num_params());  // (in Eigen's storage)
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      if (!kfac_) kfac_ = std::make_unique<KfacApproximation<Scalar>>(*op_);
      if (!inverse) {
        kfac_->multiply(x.data(), y.data());
      } else {
        if (kfac_->damping() != damping) kfac_->set_damping(damping);
        kfac_->apply(x.data(), y.data());
      }
    }
    return to_array(std::move(y));
  }

  // The empirical Fisher's diagonal 1/N Σ_n (∇θ ℓ_n)² (the diagonal preconditioner's).
  py::array_t<Scalar> diagonal() {
    Vec<Scalar> d;
    {
      py::gil_scoped_release nogil;
      watch_->arm();
      d = op_->empirical_fisher_diagonal();
    }
    return to_array(std::move(d));
  }

 private:
  void check_vector(const py::array& v) const {
    if (v.ndim() != 1 || v.shape(0) != num_params())
      throw std::invalid_argument("v must be a flat vector of " + std::to_string(num_params()) +
                                  " entries (one per parameter), not of shape " + shape_of(v));
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<SignalWatch> watch_;
  FisherOptions options_;
  Dataset<Scalar> data_;
  std::unique_ptr<Network<Scalar>> net_;
  std::unique_ptr<FisherOperator<Scalar>> op_;
  std::unique_ptr<KfacApproximation<Scalar>> kfac_;
};

template <typename Scalar>
void bind_one(py::module_& m, const char* name) {
  py::class_<Fisher<Scalar>>(m, name)
      .def(py::init<std::shared_ptr<const Model>, const Array<double>&, const py::array&, const py::array&,
                    const std::string&, int, uint64_t, int>(),
           py::arg("model"), py::arg("parameters"), py::arg("inputs"), py::arg("targets"), py::arg("kind"),
           py::arg("mc_samples"), py::arg("seed"), py::arg("threads"))
      .def_property_readonly("num_params", &Fisher<Scalar>::num_params)
      .def_property_readonly("num_samples", &Fisher<Scalar>::num_samples)
      .def_property_readonly("loss", &Fisher<Scalar>::loss)
      .def("gradient", &Fisher<Scalar>::gradient)
      .def("matvec", &Fisher<Scalar>::matvec, py::arg("v"))
      .def("solve", &Fisher<Scalar>::solve, py::arg("dampings"), py::arg("tol"), py::arg("max_iters"),
           py::arg("solver"))
      .def("eigenvalues", &Fisher<Scalar>::eigenvalues, py::arg("k"), py::arg("vectors"))
      .def("kfac", &Fisher<Scalar>::kfac, py::arg("v"), py::arg("inverse"), py::arg("damping"))
      .def("diagonal", &Fisher<Scalar>::diagonal)
      .def("trace", &Fisher<Scalar>::trace, py::arg("probes"), py::arg("seed"))
      .def("density", &Fisher<Scalar>::density, py::arg("steps"), py::arg("probes"), py::arg("seed"),
           py::arg("grid_points"), py::arg("sigma"));
}

}  // namespace

void bind_fisher(py::module_& m) {
  bind_one<float>(m, "Fisher32");
  bind_one<double>(m, "Fisher64");
}

}  // namespace python
}  // namespace natgrad
