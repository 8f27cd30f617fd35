// natgrad train: the model, the training and evaluation data, an optimizer (natgrad, adam, sgd), the training
// loop (training/trainer.h) with its status on stderr (status_line.h), a line per evaluation, the CSV log, the
// final parameters and the JSON report; checkpoints (training/checkpoint.h) at each epoch's end and at a stop,
// and --resume from one. SIGINT / SIGTERM stop the run at the next step boundary: it writes what it has and
// exits with 130 / 143. Under MPI each step's batch is shared by the ranks (training/optimizer.h); rank 0 prints
// and writes.
#include "commands.h"
#include "progress.h"
#include "report.h"
#include "signals.h"
#include "status_line.h"
#include "train_checkpoint.h"
#include "world.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/model/initialization.h>
#include <natgrad/likelihood/likelihood.h>
#include <natgrad/training/checkpoint.h>
#include <natgrad/training/kfac_optimizer.h>
#include <natgrad/training/trainer.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/format_number.h"
#include "problem.h"
#include "training_log.h"
#include "training_plot.h"

namespace natgrad {
namespace cli {

namespace {

// A CSV field: a number, or empty where it does not apply (NaN).
std::string field(double v) {
  if (std::isnan(v)) return "";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);  // (every bit: the log is data)
  return buf;
}

template <typename Scalar>
std::unique_ptr<Optimizer<Scalar>> make_optimizer(const Args& a, const Network<Scalar>& model,
                                                  const Communicator* comm) {
  const Index P = model.num_params();
  FisherOptions fisher = fisher_options(a);
  fisher.communicator = comm;
  if (a.optimizer == "adam") {
    AdamOptions o;
    if (a.lr > 0) o.lr = a.lr;
    o.communicator = comm;
    return std::make_unique<AdamOptimizer<Scalar>>(P, o);
  }
  if (a.optimizer == "sgd") {
    SgdOptions o;
    if (a.lr > 0) o.lr = a.lr;
    o.momentum = a.momentum;
    o.communicator = comm;
    return std::make_unique<SgdOptimizer<Scalar>>(P, o);
  }
  if (a.optimizer == "kfac") {
    KfacStepOptions o;
    if (a.lr > 0) o.lr = a.lr;
    o.damping = a.damping;
    o.adapt_damping = a.damping_adapt == "lm";
    o.curvature_batch = a.curvature_batch;
    o.inverse_every = a.inverse_every;
    o.factor_every = a.factor_every;
    o.min_damping = a.min_damping;
    o.fisher = fisher;
    return std::make_unique<KfacOptimizer<Scalar>>(model, o);
  }
  NaturalGradientStepOptions o;
  if (a.lr > 0) o.lr = a.lr;
  o.damping = a.damping;
  o.adapt_damping = a.damping_adapt == "lm";
  o.curvature_batch = a.curvature_batch;
  o.fisher = fisher;
  o.solver = solver_from_string(a.solver);
  o.cg_tolerance = a.cg_tol;
  o.cg_max_iterations = a.cg_max_iters;
  o.line_search = a.line_search == "armijo";
  o.backtrack = a.cg_backtrack == "on";
  o.momentum = a.momentum;
  return std::make_unique<NaturalGradientOptimizer<Scalar>>(P, o);
}

// train --plot: the picture of the log so far (training_plot.h); with the run's epochs, their sample-weighted
// training losses in place of the log's plain means of the steps'.
void draw_run(const Args& a, const std::string& log, const char* optimizer, Index steps_per_epoch,
              const std::vector<EpochSummary>& epochs) {
  TrainingPlot picture;
  picture.runs.push_back(training_curve(parse_training_log(log, "the training log"), optimizer, steps_per_epoch));
  if (!epochs.empty()) {
    CurveSeries& mean = picture.runs.back().epoch_loss;
    mean = CurveSeries();
    for (const EpochSummary& e : epochs) mean.add(double(e.epoch), e.time_s, e.train_loss);
  }
  picture.title = "natgrad train: " + a.model + ", " + optimizer + ", batch " + std::to_string(a.batch);
  write_training_svg(a.plot, picture, "--plot");
}

}  // namespace

template <typename Scalar>
int run_train(Args& a, const World& world) {
  if (a.model.empty()) usage_error("--model is required");
  if (a.data.empty()) usage_error("--data is required");
  // Under MPI every rank holds the whole training and test data (docs/distributed.md) and computes on its share
  // of each batch; rank 0 prints and writes. Loading and resuming agree: a failure on any rank is every rank's.
  const Communicator* comm = world.size() > 1 ? &world.comm() : nullptr;
  double interval = kProgressInterval;  // (rank 0 prints; its environment decides, and a bad value ends every rank)
  agree(world.comm(), [&] {
    if (!world.root()) return;
    interval = progress_interval();
    check_output_paths(a);
  });
  install_signal_handlers(!a.quiet && world.root());
  const Progress progress(a.quiet);
  const ModelFile file = read_model_spec(a.model);
  Network<Scalar> model(file.spec);
  const Index T = model.output_positions(), C = model.output_size() / T;
  // --autoencoder: the inputs are the targets (an IDX directory's labels, or a file's targets, are dropped).
  const Index input_size = shape_size(file.spec.input_shape);
  if (a.autoencoder) {
    if (file.likelihood == LikelihoodKind::categorical)
      usage_error("--autoencoder needs a gaussian or bernoulli model (its targets are the inputs), not categorical");
    if (model.output_size() != input_size)
      usage_error("--autoencoder: the model's output has " + std::to_string(model.output_size()) +
                  " values but its input " + std::to_string(input_size) + "; they must be equal");
  }
  // (`count` samples from `first`, as the loader reads them, 0: to the end; for text's held-out tail)
  auto load = [&](const std::string& path, Split split, Index first = 0, Index count = 0) {
    if (!a.autoencoder)
      return load_dataset<Scalar>(path, file.spec.input_shape, file.likelihood, C, split, count, T, a.context, first);
    Dataset<Scalar> d;
    try {
      d = load_dataset<Scalar>(path, file.spec.input_shape, file.likelihood, C, split);
    } catch (const std::invalid_argument&) {  // labels (an IDX directory, a classification file)
      d = load_dataset<Scalar>(path, file.spec.input_shape, LikelihoodKind::categorical,
                               std::numeric_limits<int32_t>::max(), split);
    }
    d.targets = d.inputs;
    d.labels.clear();
    try {
      check_targets(file.likelihood, d, C, T);
    } catch (const std::invalid_argument& e) {
      usage_error(path + ": --autoencoder: the inputs as " + to_string(file.likelihood) + " targets: " + e.what());
    }
    return d;
  };
  // Text without --test-data: its last ⌊F·N⌋ windows of N (at least one) are evaluated on and never trained
  // on, the two parts read apart (the file's windows are never held twice). (The product is nudged up so that
  // 0.29 of 100 windows, 28.999999999999996 in floating point, holds out 29.)
  Index windows = 0, held = 0;
  Dataset<Scalar> data, test;
  std::string test_label = "none";
  const char* unit = a.context > 0 ? "windows" : "samples";
  agree(world.comm(), [&] {
    if (a.context > 0 && a.test_data.empty() && a.holdout > 0) {
      windows = count_samples(a.data, Split::train, a.context);
      if (windows > 0)
        held = std::max<Index>(1, static_cast<Index>(std::floor(a.holdout * double(windows) * (1 + 1e-12))));
      if (held >= windows && windows > 0) {
        load(a.data, Split::train);  // (the loader's own complaints, about the model, first)
        throw std::invalid_argument(a.data + ": 1 window of --context + 1 = " + std::to_string(a.context + 1) +
                                    " bytes, and --holdout " + detail::format_number(a.holdout) +
                                    " keeps it for evaluation: none is left to train on; give a longer text, --holdout "
                                    "0 or --test-data");
      }
    }
    data = held > 0 ? load(a.data, Split::train, 0, windows - held) : load(a.data, Split::train);
    model.check_inputs(data.inputs);
    if (held > 0) {
      test = load(a.data, Split::train, windows - held, held);
      model.check_inputs(test.inputs);
      test_label = a.data + "'s held-out tail, --holdout " + detail::format_number(a.holdout);
    }
    const bool idx_dir = std::filesystem::is_directory(a.data);
    if (!a.test_data.empty() || (idx_dir && a.context == 0)) {
      const std::string path = a.test_data.empty() ? a.data : a.test_data;
      const Split split = std::filesystem::is_directory(path) ? Split::test : Split::train;
      test = load(path, split);
      model.check_inputs(test.inputs);
      test_label = path + (split == Split::test ? " (t10k)" : "");
    }
  });
  const std::vector<std::pair<std::string, std::string>> settings = train_settings(a, model.num_params(), data.size());
  // The model's and the training data's CRC-32s, for a checkpoint to record and a resume to compare (Fashion-
  // MNIST's 60000 training images: 45 ms in float32, 90 ms in float64, beside 0.33 s to load them; computed
  // only then).
  const std::vector<std::pair<std::string, std::string>> fingerprints =
      a.checkpoint.empty() && a.resume.empty() ? std::vector<std::pair<std::string, std::string>>()
                                               : train_fingerprints(file, data);
  Vec<Scalar> theta;
  const std::unique_ptr<Optimizer<Scalar>> opt = make_optimizer<Scalar>(a, model, comm);
  TrainProgress start;
  if (!a.resume.empty()) {
    agree(world.comm(), [&] {
      // Every check before anything is written: the settings, then the tensors (whose names and shapes say
      // more than the model's fingerprint), the model's description and the training data's content, then the
      // epochs left.
      const std::map<std::string, std::string> saved = read_checkpoint_metadata(a.resume);
      check_resume(a.resume, saved, settings);
      Checkpoint<Scalar> c = load_checkpoint<Scalar>(a.resume, model);
      check_resume(a.resume, saved, fingerprints);
      try {
        for (std::size_t k = 0; k < c.buffers.size(); ++k) model.set_buffer(k, c.buffers[k].data());
        opt->load_state(c.state);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(a.resume + ": " + e.what());
      }
      if (c.progress.epochs >= a.epochs)
        usage_error("--epochs " + std::to_string(a.epochs) + " is the total, and the checkpoint " + a.resume +
                    " has completed " + std::to_string(c.progress.epochs) + " epochs: give a larger --epochs");
      theta = std::move(c.theta);
      start = c.progress;
      if (!a.weights.empty() && !a.quiet)
        std::fprintf(stderr, "note: --weights %s is not read: the parameters come from the checkpoint\n", a.weights.c_str());
    });
  } else if (a.weights.empty()) {
    theta = init_parameters(model, a.seed);
  } else {
    agree(world.comm(), [&] {
      theta = load_parameters<Scalar>(a.weights, model);
      load_buffers<Scalar>(a.weights, model);
    });
  }
  std::map<std::string, std::string> saved_settings(settings.begin(), settings.end());
  saved_settings.insert(fingerprints.begin(), fingerprints.end());
  saved_settings.erase("optimizer");  // (the checkpoint records the optimizer's name itself)
  auto write_checkpoint = [&](const TrainProgress& at) {  // (every rank holds the same state: rank 0 writes)
    if (world.root()) save_checkpoint(a.checkpoint, model, theta, *opt, at, saved_settings);
  };
  const std::string ranks = World::has_mpi() ? ", ranks: " + std::to_string(world.size()) : "";
  std::printf("natgrad train: %s (%lld parameters, %s), %s (%lld %s%s), test %s (%lld %s), optimizer %s, "
              "batch %lld, %lld epochs, %s, %d threads%s\n",
              a.model.c_str(), static_cast<long long>(model.num_params()), to_string(file.likelihood), a.data.c_str(),
              static_cast<long long>(data.size()), unit,
              a.context > 0 ? (" of " + std::to_string(a.context + 1) + " bytes").c_str() : "", test_label.c_str(),
              static_cast<long long>(test.size()), unit,
              opt->name(), static_cast<long long>(a.batch), static_cast<long long>(a.epochs), a.dtype.c_str(),
              num_threads(), ranks.c_str());
  bool has_norm = false;
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    has_norm = has_norm || model.layer(l).type() == LayerType::batch_norm;
  if (has_norm && !a.quiet)
    std::fprintf(stderr, "note: batch norm trains in evaluation mode: its running statistics stay fixed\n");
  if (!a.resume.empty())
    std::printf("resumed from %s at step %lld (%lld epochs completed, %.2f s of training)\n", a.resume.c_str(),
                static_cast<long long>(start.steps), static_cast<long long>(start.epochs), start.time_s);

  // A resumed run continues the log: the rows up to the checkpoint's step, then its own.
  const std::string header = std::string(kTrainingLogHeader) + "\n";
  std::ostringstream csv;
  csv << (a.resume.empty() || a.log.empty() ? header : log_before(a.log, start.steps, header));
  const Index per_epoch = (data.size() + a.batch - 1) / a.batch, total_steps = per_epoch * a.epochs;
  StatusLine status(progress, interval);
  TrainOptions to;
  to.epochs = a.epochs;
  to.batch = a.batch;
  to.shuffle = !a.no_shuffle;
  to.seed = a.seed;
  to.eval_every = a.eval_every;
  to.max_time_s = a.max_time;
  to.start = start;
  to.stop_requested = stop_asked;  // (only answers: on_begin says what runs)
  // What runs, for the status line's updates: the trainer says what starts, a record or a checkpoint written
  // says it ended.
  to.on_begin = [&](TrainPhase phase, Index step) {
    status.begin(phase == TrainPhase::step ? "step " + std::to_string(step)
                 : phase == TrainPhase::evaluation ? "evaluation" : "checkpoint");
  };
  to.communicator = comm;
  if (!a.checkpoint.empty())  // (a failed write ends every rank: agreed)
    to.on_epoch_end = [&](const TrainProgress& at) {
      agree(world.comm(), [&] { write_checkpoint(at); });
      status.begin("");
    };
  to.on_record = [&](const TrainRecord& r) {
    if (r.eval) {
      csv << "eval," << r.step << "," << r.epoch << "," << field(r.time_s) << ",,,,," << field(r.test_loss) << ","
          << field(r.test_accuracy) << "\n";
      status.aside([&] {
        std::printf("epoch %lld, step %lld: %stest loss %s, test accuracy %s, %.2f s\n", static_cast<long long>(r.epoch),
                    static_cast<long long>(r.step),
                    std::isnan(r.train_loss) ? "" : ("train loss " + field(r.train_loss) + ", ").c_str(),
                    field(r.test_loss).c_str(), field(r.test_accuracy).c_str(), r.time_s);
        std::fflush(stdout);
      });
      status.begin("");
      return;
    }
    const StepResult& s = r.result;
    const bool natgrad = a.optimizer == "natgrad", kfac = a.optimizer == "kfac";
    csv << "step," << r.step << "," << r.epoch << "," << field(r.time_s) << "," << field(s.loss) << "," << field(s.lr)
        << "," << (natgrad || kfac ? field(s.damping) : "") << "," << (natgrad ? std::to_string(s.cg_iterations) : "") << ",,\n";
    // Each step's status, shown at the run's first step, at each epoch's last (which ends the line) and at the
    // status line's updates.
    const bool epoch_end = r.step % per_epoch == 0;
    status.begin("");
    const double eta = r.time_s / double(r.step) * double(total_steps - r.step);
    char text[320];
    if (natgrad)
      std::snprintf(text, sizeof text, "epoch %lld step %lld/%lld: loss %.6f, lr %g, damping %.3g, %s %lld%s%s, eta %.0f s",
                    static_cast<long long>(r.epoch), static_cast<long long>(r.step), static_cast<long long>(total_steps),
                    s.loss, s.lr, s.damping, to_string(s.solver), static_cast<long long>(s.cg_iterations),
                    s.cg_iterate < s.cg_iterations ? (" (took iterate " + std::to_string(s.cg_iterate) + ")").c_str() : "",
                    s.rejected ? " (rejected)" : "", eta);
    else if (kfac)
      std::snprintf(text, sizeof text, "epoch %lld step %lld/%lld: loss %.6f, step size %.3g, damping %.3g%s, eta %.0f s",
                    static_cast<long long>(r.epoch), static_cast<long long>(r.step), static_cast<long long>(total_steps),
                    s.loss, s.lr, s.damping, s.rejected ? " (rejected)" : "", eta);
    else
      std::snprintf(text, sizeof text, "epoch %lld step %lld/%lld: loss %.6f, lr %g, eta %.0f s",
                    static_cast<long long>(r.epoch), static_cast<long long>(r.step), static_cast<long long>(total_steps),
                    s.loss, s.lr, eta);
    using Show = StatusLine::Show;
    status.update(text, epoch_end ? Show::now_ended : r.step == start.steps + 1 ? Show::now : Show::later);
  };
  const TrainSummary sum = train<Scalar>(model, file.likelihood, theta, data, test.size() > 0 ? &test : nullptr, *opt, to);
  status.finish();
  const bool interrupted = sum.stopped && stop_agreed(world);  // (rank 0's signal stopped every rank)
  if (!world.root()) return interrupted ? interrupted_status() : 0;
  std::printf("trained %lld steps, %lld epochs in %.2f s%s", static_cast<long long>(sum.steps),
              static_cast<long long>(sum.epochs), sum.time_s,
              !sum.stopped ? "" : interrupted ? (std::string(" (stopped by ") + signal_name() + ")").c_str() : " (stopped by --max-time)");
  if (test.size() > 0)
    std::printf("; test loss %s, test accuracy %s", field(sum.test_loss).c_str(), field(sum.test_accuracy).c_str());
  std::printf("\n");
  if (!a.checkpoint.empty()) {
    if (sum.stopped) write_checkpoint(sum.progress);  // (at the end, the last epoch's end wrote it)
    std::printf("wrote the checkpoint (step %lld) to %s\n", static_cast<long long>(sum.progress.steps),
                a.checkpoint.c_str());
  } else if (interrupted) {
    std::printf("interrupted by %s at step %lld: the training state was not saved (give --checkpoint to resume "
                "later)\n", signal_name(), static_cast<long long>(sum.steps));
  }
  if (!a.save.empty()) {
    save_state_dict(a.save, model, theta, out_dtype(a), {{"natgrad", "trained parameters"}, {"optimizer", opt->name()}});
    std::printf("wrote the parameters to %s\n", a.save.c_str());
  }
  if (!a.log.empty()) {
    write_file_atomically(a.log, csv.str());
    std::printf("wrote the log to %s\n", a.log.c_str());
  }
  if (!a.plot.empty()) {
    draw_run(a, csv.str(), opt->name(), per_epoch, sum.per_epoch);
    std::printf("wrote the plot to %s\n", a.plot.c_str());
  }
  if (!a.report.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "train";
    j["optimizer"] = opt->name();
    j["params"] = model.num_params();
    j["samples"] = data.size();
    j["test_samples"] = test.size();
    if (a.context > 0) j["context"] = a.context;
    j["batch"] = a.batch;
    j["dtype"] = a.dtype;
    j["threads"] = num_threads();
    j["ranks"] = world.size();
    j["steps"] = sum.steps;
    auto num = [](double v) { return std::isnan(v) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); };
    j["epochs"] = nlohmann::ordered_json::array();
    for (const EpochSummary& e : sum.per_epoch) {
      j["epochs"].push_back({{"epoch", e.epoch},
                             {"train_loss", e.train_loss},
                             {"test_loss", num(e.test_loss)},
                             {"test_accuracy", num(e.test_accuracy)},
                             {"time_s", e.time_s}});
      if (a.optimizer == "natgrad" || a.optimizer == "kfac") j["epochs"].back()["damping"] = e.damping;
      if (a.optimizer == "natgrad") j["epochs"].back()["cg_iterations"] = e.cg_iterations;
    }
    j["test_loss"] = num(sum.test_loss);
    j["test_accuracy"] = num(sum.test_accuracy);
    j["stopped"] = sum.stopped;
    if (interrupted) j["interrupted"] = {{"signal", signal_name()}};
    if (!a.resume.empty()) j["resumed"] = {{"checkpoint", a.resume}, {"steps", start.steps}, {"epochs", start.epochs}};
    j["time_s"] = sum.time_s;
    write_file_atomically(a.report, j.dump(2) + "\n");
  }
  return interrupted ? interrupted_status() : 0;
}

template int run_train<float>(Args&, const World&);
template int run_train<double>(Args&, const World&);

}  // namespace cli
}  // namespace natgrad
